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
