import Foundation
import Testing
@testable import Engine
import CSwitchyardKernels

@Suite(.serialized) struct RealModelForwardTests {
    /// The engine's logits on the real model agree with a float reference within what 8-bit activations allow.
    @Test func matchesFloatReference() throws {
        let gguf = try GGUFFile(path: TestPaths.model())
        let model = try Model(gguf: gguf)
        let engine = try Engine(model: model, threads: 2)
        let ref = try ReferenceLlama(gguf: gguf)
        let prompt: [Int32] = [1, 9690, 198, 2683, 359, 253, 5356, 5646]
        let seq = try engine.createSequence(maxContext: 64)
        let out = try engine.forward([BatchItem(sequence: seq, tokens: prompt)], logits: .all)
        var maxDiff = 0.0
        for (i, t) in prompt.enumerated() {
            let r = ref.step(t)
            let ours = logSoftmax(out.row(i))
            let theirs = r.withUnsafeBufferPointer { logSoftmax($0) }
            // compare on the reference's top-5
            let top = theirs.indices.sorted { theirs[$0] > theirs[$1] }.prefix(5)
            var d = 0.0
            for j in top { d = max(d, abs(ours[j] - theirs[j])) }
            print("reference: pos \(i) diff \(d) top \(Array(top)) ours \(top.map { ours[$0] }) ref \(top.map { theirs[$0] })")
            maxDiff = max(maxDiff, d)
        }
        print("reference: max top-5 logprob diff \(maxDiff)")
        #expect(maxDiff < 0.25)
    }
}
