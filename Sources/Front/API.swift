// OpenAI-compatible request types and their strict decoding (Foundation-free; fuzzed with the HTTP parser).

#if canImport(JSONSchema)   // the fuzz target (fuzz/run) compiles it into its own module
import JSONSchema
#endif

public enum RouteKind: String, Sendable, Equatable {
    case chatCompletions = "chat.completions"
    case completions = "completions"
}

public struct ChatMessage: Sendable, Equatable {
    public enum Role: String, Sendable, Equatable, CaseIterable {
        case system, developer, user, assistant, tool
        /// The role the worker's chat template sees: OpenAI's `developer` messages are its system messages
        /// for models without a developer turn (every chat template here).
        public var wireRole: String { self == .developer ? "system" : rawValue }
    }
    public var role: Role
    public var content: String
    public init(role: Role, content: String) { self.role = role; self.content = content }
}

/// Sampling parameters. `nil` means "the worker's default".
public struct SamplingParams: Sendable, Equatable {
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var minP: Double?
    public var seed: Int64?
    /// At most 4 stop strings, each non-empty.
    public var stop: [String] = []
    /// Log-probabilities of the generated tokens: nil = none, n = each token's and its n most likely
    /// alternatives (chat: `logprobs: true` with `top_logprobs` 0...20; completions: `logprobs` 0...5).
    public var logprobs: Int?
    /// OpenAI's penalties on tokens already generated, -2...2 (nil: 0, off).
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    /// OpenAI's logit_bias: added to these tokens' logits before sampling, -100...100 each.
    public var logitBias: [LogitBias] = []
    /// response_format {"type": "json_object"}: the answer is constrained to one JSON object.
    public var jsonObject = false
    /// response_format json_schema: the compiled schema (JSONSchema.SchemaProgram's binary form; jsonObject is set too).
    public var jsonSchema: [UInt8] = []
    public init() {}

    public static let maxTokensLimit = 1 << 20
    /// OpenAI's bounds: chat's top_logprobs and the legacy completions' logprobs.
    public static let maxTopLogprobsChat = 20
    public static let maxLogprobsCompletions = 5
}

public struct LogitBias: Sendable, Equatable {
    public var token: Int32
    public var bias: Double
    public init(token: Int32, bias: Double) { self.token = token; self.bias = bias }
}

/// Who is on the other end of the connection (the client-hash routing key).
public enum PeerIdentity: Sendable, Hashable {
    /// SO_PEERCRED of a Unix-socket client.
    case unix(uid: UInt32, pid: Int32)
    /// Numeric address of a TCP client (port excluded).
    case tcp(address: String)
    case unknown
}

/// A parsed, validated generation request, handed to the backend.
public struct APIRequest: Sendable, Equatable {
    /// Unique per server run; every BackendEvent for this request carries it.
    public var id: UInt64
    public var kind: RouteKind
    public var model: String?
    /// Chat requests: the conversation. Empty for completions.
    public var messages: [ChatMessage]
    /// Completions: the prompt. Empty for chat (the worker applies the chat template).
    public var prompt: String
    /// Completions: a prompt given as token ids (used as they are: no BOS is added); nil for a text prompt.
    public var promptTokens: [Int32]?
    public var sampling: SamplingParams
    public var stream: Bool
    /// stream_options.include_usage
    public var includeUsage: Bool
    /// X-Session-Id header, else body session_id, else body user; nil when none.
    public var sessionKey: String?
    public var peer: PeerIdentity
    /// Chat with tool_choice "required" or a named function: the answer is constrained to one call
    /// (`{"name", "arguments"}`, sampling.jsonSchema) and the front returns it as `tool_calls`.
    public var toolCall = false
    /// Chat with tools and tool_choice "auto": the functions are described to the model, which may answer
    /// with a call (`{"name", "arguments"}` of one of these) or in text; the front tells which at the end.
    public var autoToolNames: [String] = []

    public init(id: UInt64, kind: RouteKind, model: String? = nil, messages: [ChatMessage] = [], prompt: String = "",
                sampling: SamplingParams = SamplingParams(), stream: Bool = false, includeUsage: Bool = false,
                sessionKey: String? = nil, peer: PeerIdentity = .unknown) {
        self.id = id; self.kind = kind; self.model = model; self.messages = messages; self.prompt = prompt
        self.sampling = sampling; self.stream = stream; self.includeUsage = includeUsage
        self.sessionKey = sessionKey; self.peer = peer
    }
}

/// A 400 naming the offending parameter.
public struct APIError: Error, Equatable, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String

    public init(status: Int = 400, message: String, type: String = "invalid_request_error", param: String? = nil,
                code: String) {
        self.status = status; self.message = message; self.type = type; self.param = param; self.code = code
    }

    static func invalid(_ param: String, _ message: String) -> APIError {
        APIError(message: message, param: param, code: "invalid_value")
    }
    static func wrongType(_ param: String, expected: String, got: JSONValue) -> APIError {
        APIError(message: "'\(param)' must be \(expected), got \(got.typeName)", param: param, code: "invalid_type")
    }
}

/// Decodes request bodies. Unknown fields are ignored (clients send many optional OpenAI fields); known fields
/// are checked for type and range.
public enum APIDecoder {
    public static let maxStop = 4
    public static let maxModelBytes = 256
    /// The output-length fields per route, in the order they are read (static: no array per request).
    static let chatMaxFields: [GenerationKey] = [.max_tokens, .max_completion_tokens]
    static let completionMaxFields: [GenerationKey] = [.max_tokens]

    /// Limits of the front→worker record, equal to Wire.WireLimits' (a test checks; this file is also
    /// compiled into the fuzz target without the Wire module), checked here so that a request over them gets
    /// a 400 naming its field instead of failing when it is encoded for a worker.
    public enum WireLimits {
        public static let maxMessages = 4096
        public static let maxStopLength = 256
        public static let maxSessionKey = 256
        public static let maxLogitBiases = 1024
        public static let maxSchemaBytes = 256 << 10
    }

    static func checkWireLimits(_ req: APIRequest, sessionField: String) throws(APIError) {
        if req.messages.count > WireLimits.maxMessages {
            throw .invalid("messages", "'messages' may hold at most \(WireLimits.maxMessages) messages")
        }
        for s in req.sampling.stop where s.utf8.count > WireLimits.maxStopLength {
            throw .invalid("stop", "'stop' strings may be at most \(WireLimits.maxStopLength) bytes")
        }
        if let k = req.sessionKey, k.utf8.count > WireLimits.maxSessionKey {
            throw .invalid(sessionField, "the session key (\(sessionField)) may be at most \(WireLimits.maxSessionKey) bytes")
        }
        if req.sampling.jsonSchema.count > WireLimits.maxSchemaBytes {
            let field = req.toolCall ? "tools" : "response_format"
            throw .invalid(field, "\(req.toolCall ? "the tools' parameters compile" : "response_format.json_schema.schema compiles") to \(req.sampling.jsonSchema.count) bytes, over the limit of \(WireLimits.maxSchemaBytes)")
        }
    }

    public static func decodeGeneration(kind: RouteKind, body: [UInt8], id: UInt64, sessionHeader: String?,
                                        peer: PeerIdentity) throws(APIError) -> APIRequest {
        // Built in place: the request is written once into the result (no temporary to copy and destroy),
        // and the known fields are read into one table that is never copied.
        var req = APIRequest(id: id, kind: kind, peer: peer)
        var root = GenerationFields()
        try generationFields(body, into: &root)
        try decodeGeneration(root, sessionHeader: sessionHeader, into: &req)
        return req
    }

    @inline(never)
    static func decodeGeneration(_ root: borrowing GenerationFields, sessionHeader: String?,
                                 into req: inout APIRequest) throws(APIError) {
        let kind = req.kind
        if let m = root[.model], m != .null {
            let name = try string(m, "model")
            // Echoed in every response and SSE chunk: bounded, so one request cannot multiply its size.
            if name.utf8.count > maxModelBytes { throw .invalid("model", "'model' may be at most \(maxModelBytes) bytes") }
            req.model = name
        }
        switch kind {
        case .chatCompletions:
            guard let msgs = root[.messages] else {
                throw APIError(message: "'messages' is required", param: "messages", code: "missing_required_parameter")
            }
            guard case .array(let items) = msgs else { throw .wrongType("messages", expected: "an array", got: msgs) }
            if items.isEmpty { throw .invalid("messages", "'messages' must not be empty") }
            for (k, item) in items.enumerated() { req.messages.append(try message(item, index: k)) }
        case .completions:
            guard let p = root[.prompt] else {
                throw APIError(message: "'prompt' is required", param: "prompt", code: "missing_required_parameter")
            }
            // OpenAI's four shapes, one prompt each (n = 1): a string, an array of one string, an array of
            // token ids, an array of one array of token ids.
            let oneOnly = "'prompt' must be a string, an array of token ids, or an array of exactly one of those"
            switch p {
            case .string(let s): req.prompt = s
            case .array(let a):
                if a.isEmpty { throw .invalid("prompt", "'prompt' must not be an empty array") }
                if a.count == 1, case .string(let s) = a[0] { req.prompt = s; break }
                if a.count == 1, case .array(let ids) = a[0] { req.promptTokens = try tokenIDs(ids); break }
                if let first = a.first, case .number = first { req.promptTokens = try tokenIDs(a); break }
                throw .invalid("prompt", oneOnly)
            default: throw .wrongType("prompt", expected: "a string or an array of token ids", got: p)
            }
        }
        // Chat takes max_completion_tokens (OpenAI's newer name) over max_tokens; each one present is checked.
        for maxField in kind == .chatCompletions ? chatMaxFields : completionMaxFields {
            let maxKey = generationKeys.names[maxField.rawValue]
            if let v = root[maxField], v != .null {
                let n = try int(v, maxKey)
                if n < 1 || n > SamplingParams.maxTokensLimit {
                    throw .invalid(maxKey, "'\(maxKey)' must be between 1 and \(SamplingParams.maxTokensLimit)")
                }
                req.sampling.maxTokens = n   // max_completion_tokens, checked last, wins
            }
        }
        if let v = root[.temperature], v != .null {
            let t = try double(v, "temperature")
            if t < 0 || t > 2 { throw .invalid("temperature", "'temperature' must be between 0 and 2") }
            req.sampling.temperature = t
        }
        if let v = root[.top_p], v != .null {
            let t = try double(v, "top_p")
            if t < 0 || t > 1 { throw .invalid("top_p", "'top_p' must be in [0, 1]") }
            req.sampling.topP = t
        }
        if let v = root[.top_k], v != .null {
            let t = try int(v, "top_k")
            if t < 0 || t > 1 << 20 { throw .invalid("top_k", "'top_k' must be between 0 and 1048576") }
            req.sampling.topK = t
        }
        if let v = root[.min_p], v != .null {
            let t = try double(v, "min_p")
            if t < 0 || t > 1 { throw .invalid("min_p", "'min_p' must be between 0 and 1") }
            req.sampling.minP = t
        }
        if let v = root[.seed], v != .null {
            guard case .number(_, let i?) = v else { throw .wrongType("seed", expected: "an integer", got: v) }
            req.sampling.seed = i
        }
        if let v = root[.stop], v != .null {
            switch v {
            case .string(let str):
                if str.isEmpty { throw .invalid("stop", "'stop' strings must not be empty") }
                req.sampling.stop = [str]
            case .array(let a):
                if a.count > maxStop { throw .invalid("stop", "'stop' may hold at most \(maxStop) strings") }
                for x in a {
                    guard case .string(let str) = x else { throw .wrongType("stop", expected: "a string or an array of strings", got: x) }
                    if str.isEmpty { throw .invalid("stop", "'stop' strings must not be empty") }
                    req.sampling.stop.append(str)
                }
            default: throw .wrongType("stop", expected: "a string or an array of strings", got: v)
            }
        }
        if let v = root[.n], v != .null {
            let n = try int(v, "n")
            if n != 1 { throw .invalid("n", "only n = 1 is supported") }
        }
        req.sampling.logprobs = try logprobs(kind: kind, root)
        req.sampling.presencePenalty = try penalty(root[.presence_penalty], "presence_penalty")
        req.sampling.frequencyPenalty = try penalty(root[.frequency_penalty], "frequency_penalty")
        if let v = root[.logit_bias], v != .null { req.sampling.logitBias = try logitBias(v) }
        if let v = root[.response_format], v != .null {
            guard case .object = v, case .string(let type)? = v["type"] else {
                throw .wrongType("response_format", expected: "an object with a \"type\"", got: v)
            }
            switch type {
            case "text": break
            case "json_object": req.sampling.jsonObject = true
            case "json_schema":
                guard case .object = v["json_schema"] ?? .null else {
                    throw .invalid("response_format", "response_format json_schema needs a \"json_schema\" object with a \"schema\"")
                }
                guard let schema = v["json_schema"]?["schema"], schema != .null else {
                    throw .invalid("response_format", "response_format.json_schema needs a \"schema\"")
                }
                req.sampling.jsonObject = true
                req.sampling.jsonSchema = try SchemaCompiler.compile(schema).encoded()
            default:
                throw .invalid("response_format", "unknown response_format type '\(type.prefix(64))' (text, json_object and json_schema are supported)")
            }
        }
        if kind == .chatCompletions { try tools(root, &req) }
        if let v = root[.stream], v != .null { req.stream = try bool(v, "stream") }
        if let v = root[.stream_options], v != .null {
            guard case .object = v else { throw .wrongType("stream_options", expected: "an object", got: v) }
            if !req.stream { throw .invalid("stream_options", "'stream_options' is only allowed with stream: true") }
            if let u = v["include_usage"], u != .null { req.includeUsage = try bool(u, "stream_options.include_usage") }
        }
        var sessionID: String? = nil
        if let v = root[.session_id], v != .null { sessionID = try string(v, "session_id") }
        var user: String? = nil
        if let v = root[.user], v != .null { user = try string(v, "user") }
        var sessionField = "user"
        if let h = sessionHeader, !h.isEmpty { req.sessionKey = h; sessionField = "X-Session-Id" }
        else if let sid = sessionID, !sid.isEmpty { req.sessionKey = sid; sessionField = "session_id" }
        else if let u = user, !u.isEmpty { req.sessionKey = u }
        try checkWireLimits(req, sessionField: sessionField)
    }

    /// presence_penalty / frequency_penalty: -2...2, nil when absent or null.
    static func penalty(_ v: JSONValue?, _ name: String) throws(APIError) -> Double? {
        guard let v, v != .null else { return nil }
        let x = try double(v, name)
        if !(x >= -2 && x <= 2) { throw .invalid(name, "'\(name)' must be between -2 and 2") }
        return x
    }

    /// logit_bias: an object from token ids (decimal strings, as JSON keys are) to biases in -100...100; the
    /// worker checks the ids against its vocabulary.
    static func logitBias(_ v: JSONValue) throws(APIError) -> [LogitBias] {
        guard case .object(let pairs) = v else { throw .wrongType("logit_bias", expected: "an object of token ids to numbers", got: v) }
        if pairs.count > WireLimits.maxLogitBiases {
            throw .invalid("logit_bias", "'logit_bias' may hold at most \(WireLimits.maxLogitBiases) tokens")
        }
        var out: [LogitBias] = []
        out.reserveCapacity(pairs.count)
        var seen = Set<Int32>()
        for (key, value) in pairs {
            guard !key.isEmpty, key.utf8.count <= 10, key.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let id = Int32(key) else {
                throw .invalid("logit_bias", "'logit_bias' keys must be token ids (decimal integers from 0), got \"\(key.prefix(32))\"")
            }
            guard case .number(let b, _) = value, b >= -100, b <= 100 else {
                throw .invalid("logit_bias", "'logit_bias' values must be numbers between -100 and 100 (token \(id))")
            }
            if !seen.insert(id).inserted { throw .invalid("logit_bias", "'logit_bias' lists token \(id) twice") }
            out.append(LogitBias(token: id, bias: b))
        }
        return out
    }

    /// A prompt's token ids: integers in 0...Int32.max (the worker checks them against its vocabulary),
    /// at least one.
    static func tokenIDs(_ a: [JSONValue]) throws(APIError) -> [Int32] {
        if a.isEmpty { throw .invalid("prompt", "'prompt' must not be an empty array of token ids") }
        var ids: [Int32] = []
        ids.reserveCapacity(a.count)
        for (k, v) in a.enumerated() {
            guard case .number(_, let i?) = v, i >= 0, i <= Int64(Int32.max) else {
                throw .invalid("prompt", "'prompt' token ids must be integers from 0 to \(Int32.max); item \(k) is not (\(v.typeName))")
            }
            ids.append(Int32(i))
        }
        return ids
    }

    /// Chat: `logprobs` (boolean) turns them on; `top_logprobs` (0...20) asks for alternatives and needs
    /// `logprobs: true`. Completions (the legacy API): `logprobs` is the number of alternatives (0...5).
    static func logprobs(kind: RouteKind, _ root: GenerationFields) throws(APIError) -> Int? {
        let field = root[.logprobs].flatMap { $0 == .null ? nil : $0 }
        let topField = root[.top_logprobs].flatMap { $0 == .null ? nil : $0 }
        switch kind {
        case .chatCompletions:
            let on = try field.map { v throws(APIError) in try bool(v, "logprobs") } ?? false
            guard let t = topField else { return on ? 0 : nil }
            let top = try int(t, "top_logprobs")
            if top < 0 || top > SamplingParams.maxTopLogprobsChat {
                throw .invalid("top_logprobs", "'top_logprobs' must be between 0 and \(SamplingParams.maxTopLogprobsChat)")
            }
            if !on { throw .invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true") }
            return top
        case .completions:
            if topField != nil {
                throw .invalid("top_logprobs", "'top_logprobs' is a chat completions parameter; completions take 'logprobs': N (0 to \(SamplingParams.maxLogprobsCompletions))")
            }
            guard let v = field else { return nil }
            let n = try int(v, "logprobs")
            if n < 0 || n > SamplingParams.maxLogprobsCompletions {
                throw .invalid("logprobs", "'logprobs' must be between 0 and \(SamplingParams.maxLogprobsCompletions)")
            }
            return n
        }
    }

    /// POST /tokenize: {"content": string, "add_special": bool?, "parse_special": bool?}
    public static func decodeTokenize(_ body: [UInt8]) throws(APIError) -> (content: String, addSpecial: Bool, parseSpecial: Bool) {
        let root = try object(body)
        guard let c = root["content"] else {
            throw APIError(message: "'content' is required", param: "content", code: "missing_required_parameter")
        }
        let content = try string(c, "content")
        var addSpecial = false, parseSpecial = true
        if let v = root["add_special"], v != .null { addSpecial = try bool(v, "add_special") }
        if let v = root["parse_special"], v != .null { parseSpecial = try bool(v, "parse_special") }
        return (content, addSpecial, parseSpecial)
    }

    /// POST /detokenize: {"tokens": [int]}
    public static func decodeDetokenize(_ body: [UInt8]) throws(APIError) -> [Int32] {
        let root = try object(body)
        guard let t = root["tokens"] else {
            throw APIError(message: "'tokens' is required", param: "tokens", code: "missing_required_parameter")
        }
        guard case .array(let items) = t else { throw .wrongType("tokens", expected: "an array of integers", got: t) }
        var out: [Int32] = []
        out.reserveCapacity(items.count)
        for x in items {
            guard case .number(_, let i?) = x, i >= 0, i <= Int64(Int32.max) else {
                throw .invalid("tokens", "'tokens' must hold non-negative 32-bit integers")
            }
            out.append(Int32(i))
        }
        return out
    }

    // MARK: helpers

    /// The top-level fields decodeGeneration reads; every other field is validated and ignored.
    enum GenerationKey: Int, CaseIterable {
        case model, messages, prompt, max_tokens, max_completion_tokens, temperature, top_p, top_k, min_p, seed,
             stop, n, stream, stream_options, session_id, user, logprobs, top_logprobs,
             presence_penalty, frequency_penalty, logit_bias, response_format, tools, tool_choice, parallel_tool_calls
    }
    static let generationKeys: JSONKeys = {
        precondition(GenerationKey.allCases.count == GenerationFields.capacity, "GenerationFields holds every key")
        return JSONKeys(GenerationKey.allCases.map { "\($0)" })
    }()

    /// A generation request's known fields by key, read in one pass over the body (JSON.parseObject).
    struct GenerationFields {
        static let capacity = 25
        var values = InlineArray<25, JSONValue?>(repeating: nil)
        /// Bit k: key k is present. A request names a few of the 25 keys: an absent one is answered from
        /// this mask, without loading (and copying out) its empty slot.
        var present: UInt32 = 0
        @inline(__always) subscript(_ key: GenerationKey) -> JSONValue? {
            present & (1 << UInt32(key.rawValue)) == 0 ? nil : values[key.rawValue]
        }
        @inline(__always) mutating func set(_ k: Int, _ v: JSONValue) {
            values[k] = v
            present |= 1 << UInt32(k)
        }
    }

    static func generationFields(_ body: [UInt8], into f: inout GenerationFields) throws(APIError) {
        if body.isEmpty { throw emptyBody }
        let isObject: Bool
        do { isObject = try JSON.parseObject(body, keys: generationKeys) { k, v in f.set(k, v) } } catch {
            throw APIError(message: "invalid JSON at byte \(error.offset): \(error.message)", code: "invalid_json")
        }
        if !isObject { _ = try object(body) }   // names the JSON type the body has instead
    }

    static let emptyBody = APIError(message: "request body is empty; expected a JSON object", code: "invalid_json")

    static func object(_ body: [UInt8]) throws(APIError) -> JSONValue {
        if body.isEmpty { throw emptyBody }
        let v: JSONValue
        do { v = try JSON.parse(body) } catch {
            throw APIError(message: "invalid JSON at byte \(error.offset): \(error.message)", code: "invalid_json")
        }
        guard case .object = v else {
            throw APIError(message: "request body must be a JSON object, got \(v.typeName)", code: "invalid_json")
        }
        return v
    }

    /// One function of `tools`.
    struct Tool {
        var name: String
        var description: String?
        var parameters: JSONValue?
    }

    static let maxTools = 64

    /// tools, tool_choice and parallel_tool_calls. The functions are described to the model in the system
    /// message, and a call is the answer `{"name", "arguments"}`. With tool_choice "required" or a named
    /// function the answer is forced to be a call: constrained to that shape for one of them, arguments
    /// validated against its parameters. With "auto" (the default with tools) the model chooses: an answer
    /// that is such an object naming one of the functions is returned as a call, any other as text.
    /// "none": answered in text, the functions not shown.
    static func tools(_ root: GenerationFields, _ req: inout APIRequest) throws(APIError) {
        if let v = root[.parallel_tool_calls], v != .null { _ = try bool(v, "parallel_tool_calls") }   // one call either way
        guard let t = root[.tools], t != .null else {
            if let c = root[.tool_choice], c != .null {
                throw .invalid("tool_choice", "'tool_choice' is only allowed when 'tools' are given")
            }
            return
        }
        guard case .array(let items) = t else { throw .wrongType("tools", expected: "an array", got: t) }
        guard items.count <= maxTools else { throw .invalid("tools", "at most \(maxTools) tools") }
        var tools: [Tool] = []
        for (k, item) in items.enumerated() {
            let p = "tools[\(k)]"
            guard case .object = item, let type = item["type"], type == .string("function") else {
                throw .invalid(p, "'\(p).type' must be \"function\"")
            }
            guard let f = item["function"], case .object = f else { throw .invalid("\(p).function", "'\(p).function' must be an object") }
            guard let n = f["name"] else {
                throw APIError(message: "'\(p).function.name' is required", param: "\(p).function.name", code: "missing_required_parameter")
            }
            let name = try string(n, "\(p).function.name")
            guard (1...64).contains(name.utf8.count),
                  name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x5F || $0 == 0x2D }) else {
                throw .invalid("\(p).function.name", "'\(p).function.name' must be 1 to 64 letters, digits, '_' or '-'")
            }
            if tools.contains(where: { $0.name == name }) { throw .invalid("\(p).function.name", "function '\(name)' is listed twice") }
            var description: String? = nil
            if let d = f["description"], d != .null { description = try string(d, "\(p).function.description") }
            var parameters: JSONValue? = nil
            if let ps = f["parameters"], ps != .null {
                guard case .object = ps else { throw .wrongType("\(p).function.parameters", expected: "a JSON Schema object", got: ps) }
                parameters = ps
            }
            if let st = f["strict"], st != .null { _ = try bool(st, "\(p).function.strict") }   // always enforced
            tools.append(Tool(name: name, description: description, parameters: parameters))
        }
        var forced: [Tool] = []
        switch root[.tool_choice] {
        case .string("none")?: return
        case nil, .null?, .string("auto")?:
            guard !tools.isEmpty else { return }
            if req.sampling.jsonObject {
                // Every answer would begin with '{' and could read as a call: say which one is wanted.
                throw .invalid("tool_choice", "tool_choice \"auto\" (the default with tools) cannot be combined with 'response_format'; use \"none\", \"required\" or a named function")
            }
            try roomForTools(req)
            req.autoToolNames = tools.map(\.name)
            describe(tools, forced: false, in: &req)
            return
        case .string("required")?: forced = tools
        case let c? where c["type"] == .string("function"):
            guard case .string(let name)? = c["function"]?["name"] else {
                throw .invalid("tool_choice", "'tool_choice.function.name' must name a function")
            }
            guard let tool = tools.first(where: { $0.name == name }) else {
                throw .invalid("tool_choice", "tool_choice names '\(name.prefix(64))', which is not in 'tools'")
            }
            forced = [tool]
        case let c?:
            throw .invalid("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}, not \(c.typeName)")
        }
        guard !forced.isEmpty else { throw .invalid("tools", "'tools' must not be empty with tool_choice \"required\"") }
        if req.sampling.jsonObject { throw .invalid("response_format", "'response_format' cannot be combined with a forced tool call") }
        try roomForTools(req)
        req.sampling.jsonObject = true
        req.sampling.jsonSchema = try SchemaCompiler.compileToolCall(forced.map { ($0.name, $0.parameters) }).encoded()
        // The call ends where its object closes: stop strings (which could cut the JSON) do not apply.
        req.sampling.stop = []
        req.toolCall = true
        describe(forced, forced: true, in: &req)
    }

    /// The functions' description may need one more message: the client's must leave room for it.
    static func roomForTools(_ req: APIRequest) throws(APIError) {
        let first = req.messages.first?.role
        if first != .system && first != .developer && req.messages.count >= WireLimits.maxMessages {
            throw .invalid("messages", "'messages' may hold at most \(WireLimits.maxMessages - 1) messages with tools and no system message (one more describes the functions)")
        }
    }

    /// The functions, for the model: in the system message (a new one if the conversation has none).
    static func describe(_ tools: [Tool], forced: Bool, in req: inout APIRequest) {
        var w = JSONWriter(capacity: 512)
        if forced {
            w.raw("You can call functions. To call one, answer with only a JSON object {\"name\": <the function's name>, \"arguments\": <an object of its arguments>}. The functions:")
        } else {
            w.raw("You can call functions. If one of them is needed to answer, reply with only a JSON object {\"name\": <the function's name>, \"arguments\": <an object of its arguments>}; otherwise answer normally. The functions:")
        }
        for tool in tools {
            w.raw("\n{\"name\":"); w.string(tool.name)
            if let d = tool.description { w.raw(",\"description\":"); w.string(d) }
            w.raw(",\"parameters\":"); w.value(tool.parameters ?? .object([("type", .string("object")), ("properties", .object([]))]))
            w.raw("}")
        }
        let text = String(decoding: w.bytes, as: UTF8.self)
        if let first = req.messages.first, first.role == .system || first.role == .developer {
            req.messages[0].content += (first.content.isEmpty ? "" : "\n\n") + text
        } else {
            req.messages.insert(ChatMessage(role: .system, content: text), at: 0)
        }
    }

    static func message(_ v: JSONValue, index k: Int) throws(APIError) -> ChatMessage {
        let p = "messages[\(k)]"
        guard case .object = v else { throw .wrongType(p, expected: "an object", got: v) }
        guard let r = v["role"] else {
            throw APIError(message: "'\(p).role' is required", param: "\(p).role", code: "missing_required_parameter")
        }
        let roleName = try string(r, "\(p).role")
        guard let role = ChatMessage.Role(rawValue: roleName) else {
            let known = ChatMessage.Role.allCases.map(\.rawValue).joined(separator: ", ")
            throw .invalid("\(p).role", "unknown role '\(roleName)' in \(p) (expected one of: \(known))")
        }
        var content = ""
        if let c = v["content"] {
            switch c {
            case .null: break
            case .string(let s): content = s
            case .array(let parts):
                // [{"type":"text","text":"..."}]: text parts are concatenated; other part types are refused.
                for (j, part) in parts.enumerated() {
                    guard case .object = part, part["type"] == .string("text"), case .string(let t)? = part["text"] else {
                        throw .invalid("\(p).content[\(j)]", "only text content parts are supported")
                    }
                    content += t
                }
            default: throw .wrongType("\(p).content", expected: "a string or an array of text parts", got: c)
            }
        } else if role != .assistant {
            throw APIError(message: "'\(p).content' is required", param: "\(p).content", code: "missing_required_parameter")
        }
        // An assistant's earlier calls: shown to the model as the JSON it answers calls with.
        if role == .assistant, let calls = v["tool_calls"], calls != .null {
            guard case .array(let items) = calls else { throw .wrongType("\(p).tool_calls", expected: "an array", got: calls) }
            var w = JSONWriter(capacity: 128)
            for (j, call) in items.enumerated() {
                guard case .object = call, case .string(let name)? = call["function"]?["name"] else {
                    throw .invalid("\(p).tool_calls[\(j)]", "'\(p).tool_calls[\(j)].function.name' must be a string")
                }
                if !content.isEmpty || j > 0 { w.raw("\n") }
                w.raw("{\"name\":"); w.string(name); w.raw(",\"arguments\":")
                switch call["function"]?["arguments"] {
                case .string(let a)?:
                    // The arguments as the JSON they hold (as the model wrote them), else as a string.
                    if let parsed = try? JSON.parse(Array(a.utf8)) { w.value(parsed) } else { w.string(a) }
                case nil, .null?: w.raw("{}")
                case let other?: throw .wrongType("\(p).tool_calls[\(j)].function.arguments", expected: "a string", got: other)
                }
                w.raw("}")
            }
            content += String(decoding: w.bytes, as: UTF8.self)
        }
        return ChatMessage(role: role, content: content)
    }

    static func string(_ v: JSONValue, _ p: String) throws(APIError) -> String {
        guard case .string(let s) = v else { throw .wrongType(p, expected: "a string", got: v) }
        return s
    }
    static func bool(_ v: JSONValue, _ p: String) throws(APIError) -> Bool {
        guard case .bool(let b) = v else { throw .wrongType(p, expected: "a boolean", got: v) }
        return b
    }
    static func double(_ v: JSONValue, _ p: String) throws(APIError) -> Double {
        guard case .number(let d, _) = v else { throw .wrongType(p, expected: "a number", got: v) }
        return d
    }
    static func int(_ v: JSONValue, _ p: String) throws(APIError) -> Int {
        guard case .number(let d, let i) = v else { throw .wrongType(p, expected: "an integer", got: v) }
        if let i, let n = Int(exactly: i) { return n }
        // An integral value written with a fraction or exponent (100.0, 1e2) is that integer, as JSON
        // validators in lax mode take it, within the range a double holds exactly.
        if d.isFinite, d == d.rounded(), abs(d) <= 9_007_199_254_740_992 { return Int(d) }
        if d.isFinite, d == d.rounded() { throw .invalid(p, "'\(p)' is out of range (\(d))") }
        throw .wrongType(p, expected: "an integer", got: v)
    }
}
