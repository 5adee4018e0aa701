import Foundation
import Testing
@testable import Engine

/// llama.cpp goldens (../shared/fixtures/llama-cpp-goldens.json): greedy generations with top-5 logprobs.
struct Goldens: Decodable {
    struct Greedy: Decodable { var user: String; var text: String; var ids: [Int32]; var top5: [[[Double]]] }
    var greedy: [Greedy]

    static func load() throws -> Goldens {
        let data = try Data(contentsOf: TestPaths.goldens)
        return try JSONDecoder().decode(Goldens.self, from: data)
    }

    static func prompt(_ user: String) -> String {
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "<|im_start|>user\n\(user)<|im_end|>\n<|im_start|>assistant\n"
    }
}

func logSoftmax(_ l: UnsafeBufferPointer<Float>) -> [Double] {
    let m = Double(l.max() ?? 0)
    var s = 0.0
    for v in l { s += exp(Double(v) - m) }
    let lse = m + log(s)
    return l.map { Double($0) - lse }
}

func argmax(_ l: UnsafeBufferPointer<Float>) -> Int32 {
    var best = 0
    for i in 1..<l.count where l[i] > l[best] { best = i }
    return Int32(best)
}

@Suite(.serialized) struct FidelityTests {
    @Test func greedyMatchesLlamaCpp() throws {
        let goldens = try Goldens.load()
        let path = try TestPaths.model()
        let gguf = try GGUFFile(path: path)
        let model = try Model(gguf: gguf)
        let tok = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let engine = try Engine(model: model, threads: 1)
        var firstTokenChecked = 0, eightMatches = 0
        var maxLogprobDiff = 0.0
        for g in goldens.greedy {
            let ids = tok.encode(Goldens.prompt(g.user), parseSpecial: true)
            let seq = try engine.createSequence(maxContext: 512)
            defer { engine.freeSequence(seq) }
            var out = try engine.forward([BatchItem(sequence: seq, tokens: ids)])
            var gen: [Int32] = []
            // Step 0: logprobs of llama.cpp's top 5 ids.
            let lp = logSoftmax(out.logits(item: 0))
            print("fidelity: '\(g.user)' ours \(g.top5[0].map { lp[Int($0[0])] }) llama.cpp \(g.top5[0].map { $0[1] })")
            for pair in g.top5[0] {
                let d = abs(lp[Int(pair[0])] - pair[1])
                maxLogprobDiff = max(maxLogprobDiff, d)
                // Tolerance 0.15: llama.cpp and we both quantize activations to 8 bits but sum in different
                // orders and use different exp/attention code; measured differences are a few hundredths.
                #expect(d <= 0.15, "'\(g.user)': logprob of \(Int(pair[0])) is \(lp[Int(pair[0])]), llama.cpp \(pair[1])")
            }
            for _ in 0..<8 {
                let next = argmax(out.logits(item: 0))
                gen.append(next)
                if tok.isEndOfGeneration(next) { break }   // llama.cpp stops there too
                out = try engine.forward([BatchItem(sequence: seq, tokens: [next])])
            }
            // First token must match wherever llama.cpp's top-1/top-2 gap exceeds 0.1 nats: a smaller gap
            // can flip under legitimate rounding differences (the fixture README says so).
            let gap = g.top5[0][0][1] - g.top5[0][1][1]
            if gap > 0.1 {
                firstTokenChecked += 1
                #expect(gen[0] == g.ids[0], "'\(g.user)': first token \(gen[0]) vs llama.cpp \(g.ids[0]) (gap \(gap))")
            }
            if Array(gen.prefix(8)) == Array(g.ids.prefix(8)) { eightMatches += 1 }
            else { print("fidelity: '\(g.user)' differs: ours \(gen) llama.cpp \(Array(g.ids.prefix(8)))") }
        }
        print("fidelity: first-token checks \(firstTokenChecked), 8-token matches \(eightMatches)/16, max top-5 logprob diff \(maxLogprobDiff)")
        // ≥ 14 of 16: a near-tie anywhere in 8 steps may flip one greedy path and diverge from there.
        #expect(eightMatches >= 14)
        #expect(firstTokenChecked >= 8)
    }
}
