// Pre-tokenization for GPT-2 byte-level BPE, matching llama.cpp's `smollm` pre-tokenizer.
//
// llama.cpp (llama-vocab.cpp) runs two regexes in sequence for `smollm` (same as starcoder/refact):
//   1. "\p{N}"  - every number code point becomes a word of its own; the text between them is kept
//                 as separate words (llama.cpp's regex splitter keeps non-matching stretches).
//   2. the GPT-2 regex 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
//      applied inside each word of step 1 (a word of step 1 is a hard boundary for step 2).
// llama.cpp does not run the second regex through std::regex: unicode.cpp has a hand-written scanner
// for exactly that string (unicode_regex_split_custom_gpt2), and its behaviour is what we reproduce:
//   - contractions are case-sensitive ("'S" is not a contraction: "'" then "S");
//   - `\s+(?!\S)`: a whitespace run of length n > 1 that is followed by something (inside the
//     current step-1 word) yields n-1 whitespace code points, leaving the last one to prefix the
//     next word; a run at the end of the step-1 word is taken whole; a single whitespace code point
//     is its own word (the implicit trailing `\s+` alternative);
//   - "the end of the step-1 word" behaves like a code point with no category at all, so " " at the
//     end of a word never starts a ` ?X+` match.
// Categories: llama.cpp's table (unicode-data.cpp) is generated with Python's `regex` module (\p{L},
// \p{N}, \s) at Unicode 15.1 (CJK Extension I, new in 15.1, is there; U+1C89, new in 16.0, is not).
// We use Unicode.Scalar.Properties (generalCategory; isWhitespace = the White_Space property, the
// same 25 code points as llama.cpp's whitespace set) and treat code points assigned after 15.1 as
// unassigned, as llama.cpp does, so that newer letters do not change word boundaries.

/// The only distinctions the GPT-2 regex makes between code points.
enum ScalarClass: UInt8 {
    case other = 0       // anything that is not \s, \p{L} or \p{N} (punctuation, symbols, marks, Cn...)
    case letter = 1      // \p{L}
    case number = 2      // \p{N}
    case whitespace = 3  // \s (White_Space)

    static func of(_ value: UInt32) -> ScalarClass {
        if value < 128 {   // the hot path: plain comparisons
            switch value {
            case 0x61...0x7A, 0x41...0x5A: return .letter
            case 0x30...0x39: return .number
            case 0x20, 0x09...0x0D: return .whitespace
            default: return .other
            }
        }
        guard let s = Unicode.Scalar(value) else { return .other }
        let p = s.properties
        if p.isWhitespace { return .whitespace }
        guard let age = p.age, age.major < 15 || (age.major == 15 && age.minor <= 1) else { return .other }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }
}

/// Splits one special-token-free fragment into pre-tokenizer words.
///
/// Input: `scalars[i]` / `classes[i]` for the code points of the fragment. Output: appends word
/// boundaries as half-open code point index ranges, in order, covering the input exactly.
enum SmolLMPretokenizer {
    static func split(scalars: UnsafeBufferPointer<UInt32>, classes: UnsafeBufferPointer<ScalarClass>,
                      into words: inout [Range<Int>]) {
        let n = scalars.count
        // Step 1: "\p{N}" - numbers one by one, the stretches between them as they are.
        var start = 0
        var i = 0
        while i < n {
            if classes[i] == .number {
                if start < i { gpt2(scalars, classes, start, i, &words) }
                words.append(i..<(i + 1))
                start = i + 1
            }
            i += 1
        }
        if start < n { gpt2(scalars, classes, start, n, &words) }
    }

    /// The GPT-2 regex alone over the whole fragment (pre-tokenizers without the digit split).
    static func splitGPT2(scalars: UnsafeBufferPointer<UInt32>, classes: UnsafeBufferPointer<ScalarClass>,
                          into words: inout [Range<Int>]) {
        gpt2(scalars, classes, 0, scalars.count, &words)
    }

    /// Step 2: llama.cpp's GPT-2 scanner over code points lo..<hi (a step-1 word).
    private static func gpt2(_ cp: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<ScalarClass>,
                             _ lo: Int, _ hi: Int, _ words: inout [Range<Int>]) {
        // Class at `p`, or nil past the end of the step-1 word (llama.cpp's empty flags).
        @inline(__always) func cl(_ p: Int) -> ScalarClass? { p < hi ? cls[p] : nil }
        let apostrophe: UInt32 = 0x27, space: UInt32 = 0x20
        var pos = lo
        while pos < hi {
            let c = cp[pos]
            // 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive, as in llama.cpp's gpt2 scanner)
            if c == apostrophe && pos + 1 < hi {
                let n1 = cp[pos + 1]
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {        // s t m d
                    words.append(pos..<(pos + 2)); pos += 2; continue
                }
                if pos + 2 < hi {
                    let n2 = cp[pos + 2]
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        words.append(pos..<(pos + 3)); pos += 3; continue           // re ve ll
                    }
                }
            }
            // ` ?X+` for X = \p{L}, \p{N}, [^\s\p{L}\p{N}]: an optional leading space, then a run.
            let lead = c == space ? cl(pos + 1) : cls[pos]
            if let k = lead, k != .whitespace {
                var end = pos + (c == space ? 1 : 0)
                while end < hi && cls[end] == k { end += 1 }
                words.append(pos..<end); pos = end; continue
            }
            // Whitespace: \s+(?!\S) then \s+.
            var nws = 0
            while pos + nws < hi && cls[pos + nws] == .whitespace { nws += 1 }
            if nws > 1 && pos + nws < hi {
                words.append(pos..<(pos + nws - 1)); pos += nws - 1; continue
            }
            if nws > 0 {
                words.append(pos..<(pos + nws)); pos += nws; continue
            }
            // Unreachable for in-range code points (every one has a class); kept as llama.cpp's
            // "no match: one code point" so that the loop always advances.
            words.append(pos..<(pos + 1)); pos += 1
        }
    }
}
