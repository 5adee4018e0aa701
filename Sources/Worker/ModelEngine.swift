// The real model behind the scheduler's two interfaces: `ModelRunner` over Engine's batched forward and
// KV sequences, `TextEngine` over the tokenizer, chat template, sampler and stop strings.
import Engine
import JSONSchema
import Wire

public final class ModelRunnerAdapter: ModelRunner {
    public let engine: Engine
    public let vocabSize: Int
    public let contextLength: Int
    public let maxBatchTokens: Int
    public let kvBytesPerToken: Int
    /// Sequence slots; each slot's KV cache holds up to `contextLength` tokens.
    let maxSlots: Int
    var slots: [SequenceID?]
    var batch: [BatchItem] = []

    /// - Parameters:
    ///   - contextLength: per-sequence context (≤ the model's); KV memory per slot is this × kvBytesPerToken.
    ///   - slots: most sequences alive at once (running + parked in the session cache).
    public init(engine: Engine, contextLength: Int, slots: Int) {
        self.engine = engine
        vocabSize = engine.config.vocabSize
        self.contextLength = max(2, min(contextLength, engine.config.contextLength))
        maxBatchTokens = engine.maxBatchTokens
        kvBytesPerToken = engine.kvBytesPerToken
        maxSlots = max(1, slots)
        self.slots = [SequenceID?](repeating: nil, count: maxSlots)
    }

    public func acquireSequence() -> Int? {
        guard let i = slots.firstIndex(where: { $0 == nil }),
              let id = try? engine.createSequence(maxContext: contextLength) else { return nil }
        slots[i] = id
        return i
    }

    public func releaseSequence(_ sequence: Int) {
        guard slots.indices.contains(sequence), let id = slots[sequence] else { return }
        engine.freeSequence(id)
        slots[sequence] = nil
    }

    public func truncateSequence(_ sequence: Int, to length: Int) {
        guard slots.indices.contains(sequence), let id = slots[sequence] else { return }
        try? engine.truncate(id, to: length)
    }

    public func forward(_ items: [StepItem], logits: (_ item: Int, _ row: UnsafeBufferPointer<Float>) -> Void) throws {
        batch.removeAll(keepingCapacity: true)
        for item in items {
            guard slots.indices.contains(item.sequence), let id = slots[item.sequence] else {
                throw RequestRejection(.internalError, "no KV sequence in slot \(item.sequence)")
            }
            batch.append(BatchItem(sequence: id, tokens: Array(item.tokens)))
        }
        let out = try engine.forward(batch, logits: .last)
        for i in items.indices { logits(i, out.logits(item: i)) }
    }
}

public final class ModelTextEngine: TextEngine {
    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    public let modelName: String

    public init(tokenizer: Tokenizer, template: ChatTemplate, modelName: String) {
        self.tokenizer = tokenizer; self.template = template; self.modelName = modelName
    }

    /// JSON mode's view of the vocabulary, built by the first request that asks for JSON.
    private var jsonTable: JSONTokenTable?

    public func begin(_ submit: SubmitRecord, contextLength: Int) throws(RequestRejection) -> (prompt: [Int32], state: any GenerationState) {
        let prompt = try promptTokens(submit)
        let s = submit.sampling
        var params = SamplingParams(temperature: s.temperature, topK: Int(s.topK), topP: s.topP, minP: s.minP,
                                    seed: s.seed, maxTokens: Int(max(1, s.maxTokens)), stop: s.stop)
        params.presencePenalty = s.presencePenalty
        params.frequencyPenalty = s.frequencyPenalty
        params.logitBias = s.logitBias.map { TokenBias(token: $0.token, bias: $0.bias) }
        do {
            let sampler = try Sampler(params: params, vocabSize: tokenizer.vocabSize)
            // A schema, else JSON mode, else none.
            var constraint: ResponseConstraint? = nil
            if !s.jsonSchema.isEmpty {
                constraint = .schema(SchemaGrammar(SchemaGrammar.Compiled(try SchemaProgram(decoding: s.jsonSchema))))
            } else if s.jsonObject {
                constraint = .jsonObject(JSONObjectGrammar())
            }
            var json: JSONTokenTable? = nil
            if constraint != nil {
                if jsonTable == nil { jsonTable = JSONTokenTable(tokenizer: tokenizer) }
                json = jsonTable
            }
            return (prompt, ModelGeneration(tokenizer: tokenizer, sampler: sampler, maxTokens: params.maxTokens, stops: s.stop,
                                            json: json, constraint: constraint))
        } catch {
            throw RequestRejection(.invalidRequest, "\(error)")
        }
    }

    /// The prompt's token ids; the model's BOS is added when its metadata asks for it.
    /// - completion: special-token text in the raw prompt is parsed (as llama-server does).
    /// - chat: the template's markers are control tokens, but special-token text inside a message's
    ///   content is tokenized as plain text (as OpenAI does; llama-server would parse it, letting a user
    ///   close their turn and forge a system one). Contents without such text tokenize exactly as the
    ///   whole rendered prompt with parseSpecial on, i.e. as llama.cpp does.
    func promptTokens(_ submit: SubmitRecord) throws(RequestRejection) -> [Int32] {
        switch submit.kind {
        case .completion:
            // Token ids as given, no BOS added (the scheduler checked them against the model's vocabulary).
            if !submit.promptTokens.isEmpty { return submit.promptTokens }
            return tokenizer.encode(submit.prompt, parseSpecial: true, addSpecial: true)
        case .chat:
            let rendered: (text: String, contentRanges: [Range<Int>])
            do {
                rendered = try template.renderWithContentRanges(
                    submit.messages.map { ChatMessage(role: $0.role, content: $0.content) }, addGenerationPrompt: true)
            } catch {
                throw RequestRejection(.invalidRequest, "\(error)")
            }
            return tokenizer.encode(rendered.text, parseSpecial: true, addSpecial: true,
                                    plainTextRanges: rendered.contentRanges)
        }
    }

    public func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        tokenizer.encode(text, parseSpecial: parseSpecial, addSpecial: addSpecial)
    }

    public func detokenize(_ tokens: [Int32]) -> String { tokenizer.decode(tokens) }

    public func tokenBytes(_ token: Int32) -> [UInt8] { tokenizer.tokenBytes(token) }
}

/// One request's sampling chain: sampler → end-of-generation check → streaming detokenizer → stop strings.
final class ModelGeneration: GenerationState {
    let tokenizer: Tokenizer
    var sampler: Sampler
    var detok: StreamingDetokenizer
    var stops: StopMatcher
    let maxTokens: Int
    var generated = 0
    var stopped = false
    /// JSON mode or a JSON schema: the vocabulary table, the answer's grammar state, and the masked copy
    /// of each row.
    let json: JSONTokenTable?
    var constraint: ResponseConstraint
    var masked: [Float] = []

    init(tokenizer: Tokenizer, sampler: Sampler, maxTokens: Int, stops: [String], json: JSONTokenTable? = nil,
         constraint: ResponseConstraint? = nil) {
        self.tokenizer = tokenizer; self.sampler = sampler; self.maxTokens = maxTokens
        detok = StreamingDetokenizer(tokenizer: tokenizer)
        self.stops = StopMatcher(stops: stops)
        self.json = json
        self.constraint = constraint ?? .jsonObject(JSONObjectGrammar())
    }

    func next(logits: UnsafeBufferPointer<Float>) -> TokenOutcome {
        let token: Int32
        if let json {
            // JSON mode: only tokens the grammar takes from here (the end of generation once the object is
            // closed) keep their logits; the sampler then runs its chain on what is left.
            if masked.count != logits.count { masked = [Float](repeating: 0, count: logits.count) }
            let c = constraint
            _ = masked.withUnsafeMutableBufferPointer { c.mask(json, logits, into: $0) }
            token = masked.withUnsafeBufferPointer { sampler.sample($0) }
            // advance takes an end-of-generation token only once the object is closed. It refuses a token
            // only if no text token could follow (never with a byte-level vocabulary) or the row had no
            // finite logit left: end here rather than go on from a state the token broke.
            guard constraint.advance(json, token: token) else {
                return TokenOutcome(token: token, text: "", finish: .stop, counts: false)
            }
        } else {
            token = sampler.sample(logits)
        }
        if tokenizer.isEndOfGeneration(token) {
            return TokenOutcome(token: token, text: "", finish: .stop, counts: false)
        }
        generated += 1
        let out = stops.push(detok.append(token))
        if out.stop != nil {
            stopped = true
            return TokenOutcome(token: token, text: out.text, finish: .stop)
        }
        // JSON mode: once the object is closed only the end of generation may follow: stop now, without
        // another forward pass for it (and a closing brace that is the max_tokens-th token is a stop).
        if json != nil && constraint.isComplete { return TokenOutcome(token: token, text: out.text, finish: .stop) }
        return TokenOutcome(token: token, text: out.text, finish: generated >= maxTokens ? .length : nil)
    }

    func flush() -> String {
        guard !stopped else { return "" }
        let tail = stops.push(detok.finish())
        if tail.stop != nil { stopped = true; return tail.text }
        return tail.text + stops.finish().text
    }
}
