import Foundation
import Testing
@testable import Engine

/// The real SmolLM2 vocabulary, read through GGUFFile once for all tokenizer tests.
enum RealVocab {
    struct Loaded: Sendable {
        let config: TokenizerConfig
        let tokenizer: Tokenizer
    }
    private static let loaded: Result<Loaded, any Error> = Result {
        let gguf = try GGUFFile(path: try TestPaths.model())
        let config = try TokenizerConfig(gguf: gguf)
        return Loaded(config: config, tokenizer: try Tokenizer(config: config))
    }
    static func get() throws -> Loaded { try loaded.get() }
    static func tokenizer() throws -> Tokenizer { try get().tokenizer }

    struct Goldens: Decodable {
        struct Tokenization: Decodable { let text: String; let ids: [Int32] }
        struct Greedy: Decodable { let user: String; let ids: [Int32] }
        let tokenize: [Tokenization]
        let greedy: [Greedy]
    }
    static func goldens() throws -> Goldens {
        let data = try Data(contentsOf: TestPaths.goldens)
        return try JSONDecoder().decode(Goldens.self, from: data)
    }
}

/// Strings beyond the fixtures that exercise the pre-tokenizer and the byte map.
let trickyStrings: [String] = [
    "👩‍👩‍👧‍👦 family, 🇫🇷 flag, 1️⃣ keycap",
    "e\u{301}te\u{301} cafe\u{301} (combining acute) a\u{308}\u{304}",
    "中文字符测试，标点。「引号」",
    "한국어 텍스트",
    "שלום עולם \u{200F}mixed\u{200E} RTL",
    "null\u{0}byte bell\u{7} esc\u{1B}[0m del\u{7F} \u{85}nel",
    "12345678901234567890 ٣٤٥ ⅫⅣ ½ ²³",
    "tab\t\ttabs   \n\n\n  \t\n mixed",
    "     ",
    "\n",
    " \u{3000}ideographic\u{2003}em\u{A0}nbsp",
    "I'M HE'S 'S 's 'T 'Re 're 'll 'LL '' 'x ' '",
    "<|im_start <|im_end| |im_start|> <|im_start|x <|endoftext <|",
    "<|im_start|><|im_start|><|im_end|>\n<|endoftext|>",
    "<<|im_start|>> <|<|im_end|>|>",
    "a\u{FFFD}b \u{FEFF}bom \u{E000}private \u{10FFFF}",
    "ĠĊ Ġ Ċ ÿ Ā ā",
    "x" + String(repeating: "ab", count: 300),
    String(repeating: "🙂", count: 50),
]

@Suite("Tokenizer against llama.cpp")
struct TokenizerGoldenTests {
    @Test func everyGoldenTokenizationIsIdentical() throws {
        let tok = try RealVocab.tokenizer()
        let goldens = try RealVocab.goldens()
        #expect(goldens.tokenize.count == 30)
        for g in goldens.tokenize {
            let ids = tok.encode(g.text, parseSpecial: true, addSpecial: false)
            #expect(ids == g.ids, "tokenize(\(g.text.debugDescription))")
        }
    }

    @Test func goldenRoundTrips() throws {
        let tok = try RealVocab.tokenizer()
        for g in try RealVocab.goldens().tokenize {
            #expect(tok.decode(g.ids) == g.text, "decode(llama.cpp ids of \(g.text.debugDescription))")
            #expect(tok.decode(tok.encode(g.text)) == g.text)
        }
    }

    @Test func trickyStringsRoundTrip() throws {
        let tok = try RealVocab.tokenizer()
        for s in trickyStrings {
            #expect(tok.decode(tok.encode(s)) == s, "round trip of \(s.debugDescription)")
            #expect(tok.decode(tok.encode(s, parseSpecial: false)) == s, "round trip (no special) of \(s.debugDescription)")
        }
    }
}
