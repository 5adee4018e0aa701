// Tokenizer settings from GGUF metadata (tokenizer.ggml.*), consumed by the Tokenizer (engine-text).

public struct TokenizerConfig: Sendable, Equatable {
    /// Token strings by id (GPT-2 byte-level BPE: bytes mapped through byte-to-unicode).
    public var tokens: [String]
    /// llama.cpp token types by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
    /// all 1 when the file has none.
    public var tokenTypes: [Int32]
    /// BPE merges "a b" in rank order (empty for non-BPE models).
    public var merges: [String]
    public var bosID: Int32?
    public var eosID: Int32?
    /// End-of-turn: tokenizer.ggml.eot_token_id, else the id of "<|im_end|>" when present.
    public var eotID: Int32?
    public var paddingID: Int32?
    public var addBOS: Bool
    /// tokenizer.ggml.pre (e.g. "smollm"); "default" when absent.
    public var preTokenizer: String
    /// tokenizer.ggml.model (e.g. "gpt2").
    public var model: String
    public var chatTemplate: String?

    public init(tokens: [String], tokenTypes: [Int32], merges: [String], bosID: Int32?, eosID: Int32?,
                eotID: Int32?, paddingID: Int32?, addBOS: Bool, preTokenizer: String, model: String,
                chatTemplate: String?) {
        self.tokens = tokens; self.tokenTypes = tokenTypes; self.merges = merges
        self.bosID = bosID; self.eosID = eosID; self.eotID = eotID; self.paddingID = paddingID
        self.addBOS = addBOS; self.preTokenizer = preTokenizer; self.model = model; self.chatTemplate = chatTemplate
    }

    public init(gguf: GGUFFile) throws {
        let model = try gguf.requireString("tokenizer.ggml.model")
        guard let tokens = gguf.stringArray("tokenizer.ggml.tokens") else {
            if gguf.metadata["tokenizer.ggml.tokens"] == nil { throw GGUFError.missingKey("tokenizer.ggml.tokens") }
            throw GGUFError.wrongMetadataType(key: "tokenizer.ggml.tokens", expected: "an array of strings")
        }
        guard !tokens.isEmpty, tokens.count <= Int(Int32.max) else {
            throw GGUFError.invalidValue(key: "tokenizer.ggml.tokens", reason: "vocabulary size \(tokens.count)")
        }
        var types = [Int32](repeating: 1, count: tokens.count)
        if let v = gguf.metadata["tokenizer.ggml.token_type"] {
            guard let t = v.intArray else {
                throw GGUFError.wrongMetadataType(key: "tokenizer.ggml.token_type", expected: "an array of integers")
            }
            guard t.count == tokens.count else {
                throw GGUFError.invalidValue(key: "tokenizer.ggml.token_type", reason: "\(t.count) entries for \(tokens.count) tokens")
            }
            for (i, x) in t.enumerated() {
                guard let x32 = Int32(exactly: x) else {
                    throw GGUFError.invalidValue(key: "tokenizer.ggml.token_type", reason: "type \(x) out of range")
                }
                types[i] = x32
            }
        }
        var merges: [String] = []
        if let v = gguf.metadata["tokenizer.ggml.merges"] {
            guard let m = v.stringArray else {
                throw GGUFError.wrongMetadataType(key: "tokenizer.ggml.merges", expected: "an array of strings")
            }
            merges = m
        }
        func id(_ key: String) throws -> Int32? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let i = v.int else { throw GGUFError.wrongMetadataType(key: key, expected: "an integer token id") }
            // llama.cpp writes -1 (as a signed type) for "none".
            if i < 0 { return nil }
            guard i < tokens.count else {
                throw GGUFError.invalidValue(key: key, reason: "token id \(i) outside the vocabulary of \(tokens.count)")
            }
            return Int32(i)
        }
        let bos = try id("tokenizer.ggml.bos_token_id")
        let eos = try id("tokenizer.ggml.eos_token_id")
        var eot = try id("tokenizer.ggml.eot_token_id")
        if eot == nil, let i = tokens.firstIndex(of: "<|im_end|>") { eot = Int32(i) }
        let pad = try id("tokenizer.ggml.padding_token_id")
        var addBOS = model == "llama"   // llama.cpp's default: SPM adds BOS, GPT-2 BPE does not
        if let v = gguf.metadata["tokenizer.ggml.add_bos_token"] {
            guard let b = v.bool else { throw GGUFError.wrongMetadataType(key: "tokenizer.ggml.add_bos_token", expected: "a bool") }
            addBOS = b
        }
        var template: String? = nil
        if let v = gguf.metadata["tokenizer.chat_template"] {
            guard let s = v.string else { throw GGUFError.wrongMetadataType(key: "tokenizer.chat_template", expected: "a string") }
            template = s
        }
        var pre = "default"
        if let v = gguf.metadata["tokenizer.ggml.pre"] {
            guard let s = v.string else { throw GGUFError.wrongMetadataType(key: "tokenizer.ggml.pre", expected: "a string") }
            pre = s
        }
        self.init(tokens: tokens, tokenTypes: types, merges: merges, bosID: bos, eosID: eos, eotID: eot,
                  paddingID: pad, addBOS: addBOS, preTokenizer: pre, model: model, chatTemplate: template)
    }
}
