import ArgumentParser
import Engine
import Foundation

/// Tokenizer throughput: encode / decode of a text corpus with the model's vocabulary.
struct TokenizerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenizer",
        abstract: "Tokenizer throughput (encode MB/s, tokens/s; decode tokens/s).")

    @Option(help: "GGUF model whose vocabulary to use.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "Text file to encode (default: a built-in mix of prose, code, numbers and non-Latin text).")
    var textFile: String?
    @Option(help: "Approximate corpus size in KiB (the text is repeated).") var kib = 1024
    @Flag(help: "Print one JSON object.") var json = false

    static let builtin = """
    The quick brown fox jumps over the lazy dog. Switchyard places requests into shared-memory rings, \
    and workers run the model with continuous batching; each session keeps its own KV cache.
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)  # 1, 1, 2, 3, 5, 8, 13
    Prices rose 3.75% to $1,234,567.89 on 2024-03-15 at 09:41:00 UTC.
    Ünïcödé çhâracters, 日本語のテキスト, Привет мир, مرحبا بالعالم, emoji 😀🚀👍🏽.
    <|im_start|>user
    Hello there! Can you explain what a tokenizer does?<|im_end|>

    """

    func run() throws {
        let t0 = Date()
        let gguf = try GGUFFile(path: model)
        let config = try TokenizerConfig(gguf: gguf)
        let t1 = Date()
        let tok = try Tokenizer(config: config)
        let t2 = Date()
        let unit = try textFile.map { try String(contentsOfFile: $0, encoding: .utf8) } ?? Self.builtin
        var corpus = ""
        while corpus.utf8.count < kib * 1024 { corpus += unit }
        let bytes = Double(corpus.utf8.count)

        // First pass: word cache cold. Second pass: warm (every word seen).
        let c0 = Date()
        let ids = tok.encode(corpus)
        let c1 = Date()
        let ids2 = tok.encode(corpus)
        let c2 = Date()
        precondition(ids == ids2)
        let text = tok.decode(ids)
        let c3 = Date()
        precondition(text == corpus, "round trip failed")

        let cold = c1.timeIntervalSince(c0), warm = c2.timeIntervalSince(c1), dec = c3.timeIntervalSince(c2)
        let result: [String: Double] = [
            "corpus_bytes": bytes, "tokens": Double(ids.count),
            "gguf_metadata_s": t1.timeIntervalSince(t0), "tokenizer_init_s": t2.timeIntervalSince(t1),
            "encode_cold_mb_per_s": bytes / cold / 1e6, "encode_cold_tok_per_s": Double(ids.count) / cold,
            "encode_warm_mb_per_s": bytes / warm / 1e6, "encode_warm_tok_per_s": Double(ids.count) / warm,
            "decode_tok_per_s": Double(ids.count) / dec,
        ]
        if json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for k in result.keys.sorted() { print("\(k): \(result[k] ?? 0)") }
        }
    }
}

/// Sampler cost per token on vocabulary-sized random logits.
struct SamplerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sampler",
        abstract: "Sampler cost per token (greedy, default chain, top-p only, top-5 logprobs).")

    @Option(help: "Vocabulary size.") var vocab = 49152
    @Option(help: "Tokens sampled per configuration.") var tokens = 2000
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        // Logits with a realistic shape: a few strong candidates over a broad low tail.
        var rng = Xoshiro256StarStar(seed: 1)
        var sets: [[Float]] = []
        for _ in 0..<8 {
            // Normal(0, 2.5) via Box-Muller, plus 20 tokens lifted by 8...16 (the plausible continuations).
            var l = (0..<vocab).map { _ -> Float in
                let u1 = max(rng.nextUnit(), 1e-12), u2 = rng.nextUnit()
                return Float(2.5 * (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
            }
            for _ in 0..<20 { l[Int(rng.next() % UInt64(vocab))] += Float(8 + rng.nextUnit() * 8) }
            sets.append(l)
        }
        let configs: [(String, SamplingParams)] = [
            ("greedy", .greedy()),
            ("default_chain", SamplingParams(temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, seed: 1)),
            ("top_p_only", SamplingParams(temperature: 1, topK: 0, topP: 0.9, minP: 0, seed: 1)),
            ("temperature_only", SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1)),
        ]
        var result: [String: Double] = ["vocab": Double(vocab)]
        var sink: Int64 = 0
        for (name, p) in configs {
            var s = try Sampler(params: p, vocabSize: vocab)
            let t0 = Date()
            for i in 0..<tokens { sink &+= Int64(sets[i % sets.count].withUnsafeBufferPointer { s.sample($0) }) }
            result["\(name)_us_per_token"] = Date().timeIntervalSince(t0) / Double(tokens) * 1e6
        }
        let t0 = Date()
        for i in 0..<tokens { sink &+= Int64(sets[i % sets.count].withUnsafeBufferPointer { Logprobs.top($0, count: 5) }.count) }
        result["top5_logprobs_us_per_token"] = Date().timeIntervalSince(t0) / Double(tokens) * 1e6
        if sink == 42 { print("") }   // keep the work observable
        if json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for k in result.keys.sorted() { print("\(k): \(result[k] ?? 0)") }
        }
    }
}
