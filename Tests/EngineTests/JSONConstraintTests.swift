import Foundation
import Testing
@testable import Engine

@Suite("JSON mode")
struct JSONConstraintTests {
    /// Feeds `text` byte by byte; returns the index of the first refused byte, or nil, and the final state.
    static func feed(_ text: String, _ g: inout JSONObjectGrammar) -> Int? {
        for (i, b) in text.utf8.enumerated() where !g.step(b) { return i }
        return nil
    }

    @Test func acceptsJSONObjectsAndCompletesAtTheirEnd() {
        let valid = [
            "{}", " {\n}", #"{"a":1}"#, #"{"a": -0.5e+3, "b": [true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]}"#,
            #"{"nested": {"deep": [[[], {}], [1, 2.25, -3E-2]]}, "k": "é漢😀"}"#, #"{"z": 0, "y": 10, "x": 1e5}"#,
            #"{"pair": "\ud83d\ude00", "bmp": "\u20AC"}"#,
        ]
        for doc in valid {
            var g = JSONObjectGrammar()
            var completeAt: Int? = nil
            for (i, b) in doc.utf8.enumerated() {
                let ok = g.step(b)
                #expect(ok, "\(doc): byte \(i) refused")
                if g.isComplete && completeAt == nil { completeAt = i }
            }
            #expect(completeAt == doc.utf8.count - 1, "\(doc): complete at \(String(describing: completeAt))")
            let space = g.step(0x20), brace = g.step(0x7B)
            #expect(!space && !brace, "nothing may follow the closed object")
            #expect((try? JSONSerialization.jsonObject(with: Data(doc.utf8))) is [String: Any])
        }
    }

    @Test func refusesWhatJSONRefuses() {
        // (document, index of the first refused byte)
        let invalid: [(String, Int)] = [
            ("[1]", 0), ("1", 0), ("\"s\"", 0), ("{a:1}", 1), (#"{"a" 1}"#, 5), (#"{"a":}"#, 5), (#"{"a":1,}"#, 7),
            (#"{"a":01}"#, 6), (#"{"a":1.}"#, 7), (#"{"a":-}"#, 6), (#"{"a":1e}"#, 7), (#"{"a":tru}"#, 8),
            (#"{"a":"\x"}"#, 7), (#"{"a":"\u12G4"}"#, 10), ("{\"a\":\"\u{01}\"}", 6), (#"{"a":[1,]}"#, 8),
            (#"{"a":[1}"#, 7),
            (#"{"a":"\udc00"}"#, 9), (#"{"a":"\ud800x"}"#, 12), (#"{"a":"\ud800\u0041"}"#, 15), (#"{"a":{]}"#, 6), ("{}}", 2), (#"{"a":1}x"#, 7), (#"{"a":+1}"#, 5),
        ]
        for (doc, at) in invalid {
            var g = JSONObjectGrammar()
            #expect(Self.feed(doc, &g) == at, "\(doc)")
        }
    }

    /// Strings must be well-formed UTF-8: no stray continuation byte, overlong form, surrogate or value past
    /// U+10FFFF, and no character cut by the closing quote.
    @Test func stringsAreWellFormedUTF8() {
        let prefix = Array(#"{"a":""#.utf8)   // 6 bytes
        for (bytes, at) in [([0x80], 6), ([0xC0, 0x80], 6), ([0xE0, 0x80], 7), ([0xED, 0xA0], 7), ([0xF4, 0x90], 7),
                            ([0xF5], 6), ([0xE2, 0x82, 0x22], 8)] as [([UInt8], Int)] {
            var g = JSONObjectGrammar()
            var refused: Int? = nil
            for (i, b) in (prefix + bytes).enumerated() where !g.step(b) { refused = i; break }
            #expect(refused == at, "\(bytes)")
        }
        var g = JSONObjectGrammar()
        #expect(Self.feed(#"{"a":"€ 😀 é"}"#, &g) == nil && g.isComplete)
    }

    @Test func nestingAndWhitespaceAreBounded() {
        var g = JSONObjectGrammar()
        #expect(Self.feed(#"{"a":"# + String(repeating: "[", count: JSONObjectGrammar.maxDepth - 1), &g) == nil)
        let deeper = g.step(0x5B)
        #expect(!deeper, "the 65th level is refused")
        var w = JSONObjectGrammar()
        // Depth 1: 32 + 4 bytes of whitespace in a row.
        #expect(Self.feed("{" + String(repeating: " ", count: JSONObjectGrammar.maxWhitespaceRun + 4), &w) == nil)
        let extra = w.step(0x20), closer = w.step(0x7D)
        #expect(!extra && closer, "whitespace beyond the run limit is refused, the closer is not")
        // Pretty-printed JSON stays valid deep down: 4-space indentation at depth 8, 8-space at depth 4.
        for (indent, depth) in [(4, 8), (8, 4), (2, 16)] {
            var doc = ""
            for d in 0..<depth { doc += "{\n" + String(repeating: " ", count: indent * (d + 1)) + "\"k\": " }
            doc += "1"
            for d in stride(from: depth - 1, through: 0, by: -1) { doc += "\n" + String(repeating: " ", count: indent * d) + "}" }
            var g = JSONObjectGrammar()
            #expect(Self.feed(doc, &g) == nil && g.isComplete, "indent \(indent) depth \(depth)")
        }
    }

    /// With the real vocabulary: random logits masked by the table, sampled and fed back, always make a
    /// prefix of a JSON object; the end-of-generation token is allowed exactly when it is complete, and
    /// the completed answers parse as objects.
    @Test func maskedRandomWalksStayJSON() throws {
        let gguf = try GGUFFile(path: try TestPaths.model())
        let tok = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let table = JSONTokenTable(tokenizer: tok)
        var rng = TestRNG(seed: 7)
        var completed = 0
        var logits = [Float](repeating: 0, count: tok.vocabSize)
        var masked = logits
        for walk in 0..<8 {
            var g = JSONObjectGrammar()
            var text: [UInt8] = []
            var sampler = try Sampler(params: SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: UInt64(walk)),
                                      vocabSize: tok.vocabSize)
            for _ in 0..<300 {
                // Favour closers, quotes and short values so that walks finish.
                for i in logits.indices { logits[i] = rng.float(-4, 4) }
                for (c, boost) in [("}", 10), ("]", 10), ("\"", 9), ("1", 6), (",", 5)] as [(String, Float)] {
                    if let id = tok.tokenID(c) { logits[Int(id)] += boost }
                }
                let result = logits.withUnsafeBufferPointer { l in masked.withUnsafeMutableBufferPointer { table.mask(l, state: g, into: $0) } }
                #expect(!result.fallback && (result.text > 0) != g.isComplete, "text tokens allowed: \(result.text), complete: \(g.isComplete)")
                expectExactMask(masked, g, tok, from: 0, context: "")
                let t = masked.withUnsafeBufferPointer { sampler.sample($0) }
                if tok.isEndOfGeneration(t) {
                    #expect(g.isComplete, "end of generation before the object closed")
                    break
                }
                #expect(!g.isComplete, "a text token after the object closed")
                #expect(table.advance(&g, token: t), "the sampled token \(t) was refused")
                tok.appendTokenBytes(t, to: &text)
            }
            if g.isComplete {
                completed += 1
                let obj = try? JSONSerialization.jsonObject(with: Data(text))
                #expect(obj is [String: Any], "not a JSON object: \(String(decoding: text, as: UTF8.self))")
            }
        }
        #expect(completed >= 3, "only \(completed) of 8 walks closed their object")
    }
}
