import ArgumentParser
import Engine
import Foundation

/// Default model location, relative to the working directory.
let defaultModelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

func requireModel(_ path: String) throws {
    guard FileManager.default.fileExists(atPath: path) else {
        throw ValidationError("model file \(path) not found: run tools/fetch-model (it downloads SmolLM2-135M-Instruct Q4_1)")
    }
}

/// `switchyard generate`: offline text generation with the engine (streams text to stdout).
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate text from a prompt (offline).")

    @Option(help: "GGUF model path.") var model: String = defaultModelPath
    @Flag(help: "Wrap the prompt as a user message in the model's chat template.") var chat = false
    @Option(help: "Prompt text.") var prompt: String
    @Option(name: .customLong("max-tokens"), help: "Maximum tokens to generate.") var maxTokens: Int = 128
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0
    @Option(help: "Random seed (same seed, same text).") var seed: UInt64?
    @Option(name: .customLong("top-k")) var topK: Int = 40
    @Option(name: .customLong("top-p")) var topP: Float = 0.95
    @Option(name: .customLong("min-p")) var minP: Float = 0.05
    @Option(help: "Compute threads.") var threads: Int = 1
    @Flag(help: "Print one JSON object {text, tokens, prompt_tokens, prefill_tok_per_s, decode_tok_per_s}.") var json = false
    @Option(name: .customLong("top-logprobs"),
            help: "With --json: also print top_logprobs, the N most likely [id, logprob] of every step (softmax of the raw logits).")
    var topLogprobs: Int = 0

    func run() throws {
        try requireModel(model)
        let gguf = try GGUFFile(path: model)
        let tokenizer = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        var text = prompt
        var plain: [Range<Int>] = []
        if chat {
            // As the server's chat path: special-token text in the user message is plain text.
            let template = try ChatTemplate(template: gguf.string("tokenizer.chat_template"))
            (text, plain) = try template.renderWithContentRanges([ChatMessage(role: "user", content: prompt)],
                                                                  addGenerationPrompt: true)
        }
        let ids = tokenizer.encode(text, parseSpecial: true, addSpecial: true, plainTextRanges: plain)
        guard !ids.isEmpty else { throw ValidationError("the prompt is empty") }
        let m = try Model(gguf: gguf)
        let engine = try Engine(model: m, threads: threads, maxBatchTokens: min(512, max(ids.count, 1)))
        guard ids.count + maxTokens <= m.config.contextLength else {
            throw ValidationError("prompt (\(ids.count) tokens) + max-tokens exceeds the context of \(m.config.contextLength)")
        }
        let params = SamplingParams(temperature: temperature, topK: topK, topP: topP, minP: minP, seed: seed,
                                    maxTokens: maxTokens, stop: [])
        try params.validate()
        guard topLogprobs >= 0 else { throw ValidationError("--top-logprobs must be >= 0") }
        var sampler = try Sampler(params: params, vocabSize: m.config.vocabSize)
        let seq = try engine.createSequence(maxContext: ids.count + maxTokens)
        var detok = StreamingDetokenizer(tokenizer: tokenizer)
        var out = ""
        var generated: [Int32] = []
        var tops: [[[Double]]] = []

        let t0 = DispatchTime.now().uptimeNanoseconds
        var result = try engine.forward([BatchItem(sequence: seq, tokens: ids)])
        let t1 = DispatchTime.now().uptimeNanoseconds
        while generated.count < maxTokens {
            if topLogprobs > 0 {
                tops.append(Logprobs.top(result.logits(item: 0), count: topLogprobs).map { [Double($0.id), Double($0.logprob)] })
            }
            let next = sampler.sample(result.logits(item: 0))
            if tokenizer.isEndOfGeneration(next) { break }
            generated.append(next)
            let piece = detok.append(next)
            out += piece
            if !json { FileHandle.standardOutput.write(Data(piece.utf8)) }
            if generated.count == maxTokens { break }
            result = try engine.forward([BatchItem(sequence: seq, tokens: [next])])
        }
        let t2 = DispatchTime.now().uptimeNanoseconds
        let tail = detok.finish()
        out += tail
        let prefill = Double(ids.count) / max(Double(t1 - t0) / 1e9, 1e-9)
        // Decode steps: one forward per generated token after the first.
        let decode = generated.count > 1 ? Double(generated.count - 1) / max(Double(t2 - t1) / 1e9, 1e-9) : 0
        if json {
            var obj: [String: Any] = ["text": out, "tokens": generated.count, "token_ids": generated.map(Int.init),
                                      "prompt_tokens": ids.count, "prefill_tok_per_s": prefill, "decode_tok_per_s": decode]
            if topLogprobs > 0 { obj["top_logprobs"] = tops }
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(tail)
        }
    }
}

