// ChatText (internal to models/): what Qwen3's chat template (ChatTemplate) and the reply parser
// (ChatReply) both use - the thinking tags and Python's str.lstrip('\n'), rstrip('\n') and strip('\n'),
// which the template applies to thinking and answers.
#pragma once

#include <algorithm>
#include <string_view>

namespace ppu::models::chat_text {

inline constexpr std::string_view kThinkOpen = "<think>";
inline constexpr std::string_view kThinkClose = "</think>";

inline std::string_view lstrip_newlines(std::string_view s) { return s.substr(std::min(s.find_first_not_of('\n'), s.size())); }
inline std::string_view rstrip_newlines(std::string_view s) { return s.substr(0, s.find_last_not_of('\n') + 1); }
inline std::string_view strip_newlines(std::string_view s) { return lstrip_newlines(rstrip_newlines(s)); }

}  // namespace ppu::models::chat_text
