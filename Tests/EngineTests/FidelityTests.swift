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
    /// Runs the 16 goldens: first-step top-5 logprob differences, first tokens where llama.cpp's top-1/top-2
    /// gap exceeds 0.1 nats, and 8-token greedy prefixes.
    struct Result {
        var diffs: [Double] = []                  // |ours − llama.cpp| for every first-step top-5 id
        var firstTokenChecked = 0
        var firstTokenMismatches: [String] = []
        var eightMatches = 0
    }

    /// `isa`: the kernel level to run at (nil: the best this CPU has).
    static func run(isa: KernelISA? = nil) throws -> Result {
        let goldens = try Goldens.load()
        let path = try TestPaths.model()
        let gguf = try GGUFFile(path: path)
        let model = try Model(gguf: gguf)
        let tok = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let engine = try Engine(model: model, threads: 1)
        if let isa { engine.setKernelOverrides(isa: isa, fastOrder: nil) }
        var r = Result()
        for g in goldens.greedy {
            let ids = tok.encode(Goldens.prompt(g.user), parseSpecial: true)
            let seq = try engine.createSequence(maxContext: 512)
            defer { engine.freeSequence(seq) }
            var out = try engine.forward([BatchItem(sequence: seq, tokens: ids)])
            var gen: [Int32] = []
            let lp = logSoftmax(out.logits(item: 0))
            print("fidelity: '\(g.user)' ours \(g.top5[0].map { lp[Int($0[0])] }) llama.cpp \(g.top5[0].map { $0[1] })")
            for pair in g.top5[0] { r.diffs.append(abs(lp[Int(pair[0])] - pair[1])) }
            for _ in 0..<8 {
                let next = argmax(out.logits(item: 0))
                gen.append(next)
                if tok.isEndOfGeneration(next) { break }   // llama.cpp stops there too
                out = try engine.forward([BatchItem(sequence: seq, tokens: [next])])
            }
            let gap = g.top5[0][0][1] - g.top5[0][1][1]
            if gap > 0.1 {
                r.firstTokenChecked += 1
                if gen[0] != g.ids[0] { r.firstTokenMismatches.append("'\(g.user)': \(gen[0]) vs \(g.ids[0]) (gap \(gap))") }
            }
            if Array(gen.prefix(8)) == Array(g.ids.prefix(8)) { r.eightMatches += 1 }
            else { print("fidelity: '\(g.user)' differs: ours \(gen) llama.cpp \(Array(g.ids.prefix(8)))") }
        }
        print("fidelity (\(isa.map { "\($0)" } ?? "default") level): first-token checks \(r.firstTokenChecked), mismatches \(r.firstTokenMismatches), 8-token matches \(r.eightMatches)/16, max top-5 logprob diff \(r.diffs.max() ?? 0)")
        return r
    }

    /// The issue's acceptance thresholds, plus a tighter guard that holds because the engine reproduces
    /// llama.cpp's CPU arithmetic bit for bit on this model (docs/ARCHITECTURE.md, "Numerics"):
    /// prompt logits compared tensor by tensor against llama.cpp's eval callback were identical in every
    /// layer (2026-11-26). Measured today: 16/16 eight-token prefixes, max top-5 difference 0.0002 nats.
    /// Every vector level this CPU has: the AVX2 level (CPUs without AVX-512) must match llama.cpp as well.
    static var vectorLevels: [KernelISA] { [.avx512, .avx2].filter { $0.rawValue <= KernelISA.best.rawValue } }

    @Test(arguments: vectorLevels) func greedyMatchesLlamaCpp(isa: KernelISA) throws {
        let r = try Self.run(isa: isa)
        let maxDiff = r.diffs.max() ?? 1
        // Issue threshold, 0.15 nats. It is tight: llama.cpp against itself with flash attention off instead
        // of on (same weights and quantization, other rounding of the attention) is off by up to 0.36 nats
        // (mean 0.077), matches 8/16 prefixes and flips the Cinderella first token (measured 2026-11-26),
        // and our engine summing its matmuls in another order was off by 0.35 nats, 10/16. Only reproducing
        // llama.cpp's arithmetic, order included, meets it.
        #expect(maxDiff <= 0.15, "max top-5 logprob difference \(maxDiff)")
        // A first token must match wherever llama.cpp's top-1/top-2 gap exceeds 0.1 nats; below that a
        // near-tie may flip under any last-bit difference (the fixture README says so).
        #expect(r.firstTokenChecked >= 8, "only \(r.firstTokenChecked) prompts have a clear first token")
        #expect(r.firstTokenMismatches.isEmpty, "\(r.firstTokenMismatches)")
        // ≥ 14 of 16 eight-token prefixes: a near-tie anywhere in 8 greedy steps may flip one path.
        #expect(r.eightMatches >= 14, "\(r.eightMatches)/16 eight-token prefixes match")
        // Tighter guard against numerics regressions: with identical arithmetic every prefix matches and the
        // only top-5 differences left are the fixture's own float softmax/log and its 4-decimal printing
        // (about 2e-4); 0.01 nats is far below what any change of rounding or summation order produces
        // (0.1–0.45 nats, see above).
        #expect(r.eightMatches == 16, "\(r.eightMatches)/16 eight-token prefixes match")
        #expect(maxDiff <= 0.01, "max top-5 logprob difference \(maxDiff): engine no longer bit-identical to llama.cpp?")
    }
}
