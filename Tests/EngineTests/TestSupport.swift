import Foundation
import SwitchyardTestSupport
import Testing
@testable import Engine

/// Paths shared by the engine tests.
enum TestPaths {
    /// The real model: SWITCHYARD_MODEL or <root>/models/SmolLM2-135M-Instruct.Q4_1.gguf, required to exist.
    static func model() throws -> String {
        let p = PackagePaths.model
        try #require(FileManager.default.fileExists(atPath: p),
                     "model file \(p) is missing: run tools/fetch-model")
        return p
    }

    static var goldens: URL { PackagePaths.goldens }

    static func tempFile(_ name: String) -> String {
        NSTemporaryDirectory() + "sy-engine-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))-\(name)"
    }
}

/// Deterministic xorshift generator for synthetic data.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float { Float.random(in: lo..<hi, using: &self) }
}

/// A grammar's token mask is exact: for every 7th token from `from`, the mask allows it iff the grammar
/// takes its bytes (the end of generation iff the answer is complete; special tokens never). Records the
/// first disagreement.
func expectExactMask<G: TokenGrammar>(_ masked: [Float], _ g: G, _ tok: Tokenizer, from: Int, context: String,
                                      sourceLocation: SourceLocation = #_sourceLocation) {
    for id in stride(from: from, to: tok.vocabSize, by: 7) {
        let bytes = tok.tokenBytes(Int32(id))
        let expected = tok.isEndOfGeneration(Int32(id)) ? g.isComplete
            : (!tok.isSpecial(Int32(id)) && !g.isComplete && bytes.withUnsafeBufferPointer { g.accepts($0) })
        if (masked[id] != -.infinity) != expected {
            Issue.record("\(context)token \(id) \(String(decoding: bytes, as: UTF8.self).debugDescription): mask \(masked[id] != -.infinity), grammar \(expected)",
                         sourceLocation: sourceLocation)
            return
        }
    }
}
