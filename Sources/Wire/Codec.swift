// Encoding and decoding of wire records (layout: see Wire.swift and docs/ARCHITECTURE.md).

/// Writes little-endian fields into a reusable byte buffer. Reuse one writer per sender (`reset()` keeps the
/// buffer) so steady-state encoding does not allocate. The buffer is a ByteWriter (raw memory, so the writer
/// is non-copyable): a field is stored with one capacity check, without an Array's uniqueness check and
/// generic `withUnsafeMutableBytes` per store (which made a 3-field record cost ~260 instructions).
public struct WireWriter: ~Copyable, @unchecked Sendable {
    private var out: ByteWriter

    public init(capacity: Int = 256) { out = ByteWriter(capacity: max(64, capacity)) }

    /// Payload bytes written so far.
    public var count: Int { out.count }

    /// The payload as a new array (tests and cold paths; hot paths use `withBytes`).
    public var bytes: [UInt8] { out.bytes }

    /// Calls `body` with the payload in place.
    public func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try out.withBytes(body)
    }

    public mutating func reset() { out.reset() }

    @inline(__always) mutating func u8(_ v: UInt8) { out.append(v) }
    @inline(__always) mutating func u16(_ v: UInt16) { out.appendLittleEndian(v) }
    @inline(__always) mutating func u32(_ v: UInt32) { out.appendLittleEndian(v) }
    @inline(__always) mutating func u64(_ v: UInt64) { out.appendLittleEndian(v) }
    @inline(__always) mutating func f32(_ v: Float) { u32(v.bitPattern) }

    mutating func string(_ s: String, field: String, limit: Int) throws(WireError) {
        let n = s.utf8.count
        guard n <= limit else { throw .tooLarge(field: field, length: n, limit: limit) }
        u32(UInt32(n))
        if n == 0 { return }
        let copied: Bool? = s.utf8.withContiguousStorageIfAvailable { src in
            out.append(src.baseAddress!, count: n)
            return true
        }
        if copied == nil {   // a bridged or otherwise non-contiguous string: byte by byte
            for c in s.utf8 { out.append(c) }
        }
    }

    /// u32 length, then the bytes.
    mutating func bytes(_ b: [UInt8], field: String, limit: Int) throws(WireError) {
        try count(b.count, field: field, limit: limit)
        out.append(b)
    }

    mutating func count(_ n: Int, field: String, limit: Int) throws(WireError) {
        guard n <= limit else { throw .tooLarge(field: field, length: n, limit: limit) }
        u32(UInt32(n))
    }

    /// token (i32), byte count (u32), bytes, logprob (f32).
    mutating func tokenLogprob(_ t: WireTokenLogprob) throws(WireError) {
        u32(UInt32(bitPattern: t.token))
        try bytes(t.bytes, field: "token_bytes", limit: WireLimits.maxTokenBytes)
        f32(t.logprob)
    }
}

/// Reads little-endian fields from an untrusted payload; every read is bounds-checked.
public struct WireReader {
    let base: UnsafeRawBufferPointer
    var offset = 0

    public init(_ payload: UnsafeRawBufferPointer) { base = payload }

    var remaining: Int { base.count - offset }

    @inline(__always) mutating func need(_ n: Int, _ field: String) throws(WireError) {
        guard n <= remaining else { throw .truncated(field: field, needed: n, remaining: remaining) }
    }

    @inline(__always) mutating func u8(_ field: String) throws(WireError) -> UInt8 {
        try need(1, field)
        defer { offset += 1 }
        return base[offset]
    }

    @inline(__always) mutating func u16(_ field: String) throws(WireError) -> UInt16 {
        try need(2, field)
        defer { offset += 2 }
        return UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always) mutating func u32(_ field: String) throws(WireError) -> UInt32 {
        try need(4, field)
        defer { offset += 4 }
        return UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    @inline(__always) mutating func u64(_ field: String) throws(WireError) -> UInt64 {
        try need(8, field)
        defer { offset += 8 }
        return UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    @inline(__always) mutating func f32(_ field: String) throws(WireError) -> Float { Float(bitPattern: try u32(field)) }

    @inline(__always) mutating func bool(_ field: String) throws(WireError) -> Bool {
        let v = try u8(field)
        guard v <= 1 else { throw .invalidValue(field: field, value: UInt64(v)) }
        return v == 1
    }

    @inline(__always) mutating func count(_ field: String, limit: Int) throws(WireError) -> Int {
        let n = Int(try u32(field))
        guard n <= limit else { throw .tooLarge(field: field, length: n, limit: limit) }
        return n
    }

    mutating func string(_ field: String, limit: Int) throws(WireError) -> String {
        let n = try count(field, limit: limit)
        try need(n, field)
        let slice = UnsafeRawBufferPointer(rebasing: base[offset..<(offset + n)])
        offset += n
        guard let s = UTF8Text.string(slice) else { throw .invalidUTF8(field: field) }
        return s
    }

    mutating func bytes(_ field: String, limit: Int) throws(WireError) -> [UInt8] {
        let n = try count(field, limit: limit)
        try need(n, field)
        defer { offset += n }
        return n == 0 ? [] : [UInt8](UnsafeRawBufferPointer(rebasing: base[offset..<(offset + n)]))
    }

    mutating func tokenLogprob() throws(WireError) -> WireTokenLogprob {
        let token = Int32(bitPattern: try u32("token"))
        let bytes = try bytes("token_bytes", limit: WireLimits.maxTokenBytes)
        return WireTokenLogprob(token: token, bytes: bytes, logprob: try f32("logprob"))
    }

    func finish() throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(remaining) }
    }
}

// MARK: - Record codecs

extension Record {
    /// Appends this record's payload to `w` (the ring adds the type and length header).
    public func encode(into w: inout WireWriter) throws(WireError) {
        switch self {
        case .submit(let r):
            w.u64(r.requestID)
            w.u8(r.kind.rawValue)
            try w.string(r.sessionKey, field: "session_key", limit: WireLimits.maxSessionKey)
            w.f32(r.sampling.temperature)
            w.f32(r.sampling.topP)
            w.f32(r.sampling.minP)
            w.u32(UInt32(bitPattern: r.sampling.topK))
            w.u32(r.sampling.maxTokens)
            w.u8(r.sampling.seed == nil ? 0 : 1)
            w.u64(r.sampling.seed ?? 0)
            try w.count(r.sampling.stop.count, field: "stop", limit: WireLimits.maxStops)
            for s in r.sampling.stop { try w.string(s, field: "stop", limit: WireLimits.maxStopLength) }
            if let n = r.sampling.logprobs, Int(n) > WireLimits.maxTopLogprobs {
                throw .tooLarge(field: "logprobs", length: Int(n), limit: WireLimits.maxTopLogprobs)
            }
            w.u8(r.sampling.logprobs.map { $0 + 1 } ?? 0)
            w.f32(r.sampling.presencePenalty)
            w.f32(r.sampling.frequencyPenalty)
            try w.count(r.sampling.logitBias.count, field: "logit_bias", limit: WireLimits.maxLogitBiases)
            for b in r.sampling.logitBias { w.u32(UInt32(bitPattern: b.token)); w.f32(b.bias) }
            w.u8(r.sampling.jsonObject ? 1 : 0)
            try w.bytes(r.sampling.jsonSchema, field: "json_schema", limit: WireLimits.maxSchemaBytes)
            try w.string(r.prompt, field: "prompt", limit: WireLimits.maxText)
            try w.count(r.messages.count, field: "messages", limit: WireLimits.maxMessages)
            for m in r.messages {
                try w.string(m.role, field: "role", limit: 32)
                try w.string(m.content, field: "content", limit: WireLimits.maxText)
            }
            try w.count(r.promptTokens.count, field: "prompt_tokens", limit: WireLimits.maxTokens)
            for t in r.promptTokens { w.u32(UInt32(bitPattern: t)) }
        case .cancel(let r):
            w.u64(r.requestID)
        case .tokenize(let r):
            w.u64(r.requestID)
            w.u8(r.addSpecial ? 1 : 0)
            w.u8(r.parseSpecial ? 1 : 0)
            try w.string(r.content, field: "content", limit: WireLimits.maxText)
        case .detokenize(let r), .tokens(let r):
            w.u64(r.requestID)
            try w.count(r.tokens.count, field: "tokens", limit: WireLimits.maxTokens)
            for t in r.tokens { w.u32(UInt32(bitPattern: t)) }
        case .delta(let r):
            w.u64(r.requestID)
            w.u32(r.completionTokens)
            try w.string(r.text, field: "text", limit: WireLimits.maxText)
        case .done(let r):
            w.u64(r.requestID)
            w.u8(r.finish.rawValue)
            w.u32(r.promptTokens)
            w.u32(r.completionTokens)
            w.u32(r.cachedTokens)
            w.u64(r.firstTokenNanos)
            w.u64(r.totalNanos)
        case .error(let r):
            w.u64(r.requestID)
            w.u16(r.code.rawValue)
            try w.string(r.message, field: "message", limit: 4096)
        case .text(let r):
            w.u64(r.requestID)
            try w.string(r.text, field: "text", limit: WireLimits.maxText)
        case .logprobs(let r):
            w.u64(r.requestID)
            try w.count(r.entries.count, field: "entries", limit: WireLimits.maxLogprobEntries)
            for e in r.entries {
                try w.tokenLogprob(e.sampled)
                try w.count(e.top.count, field: "top", limit: WireLimits.maxTopLogprobs)
                for t in e.top { try w.tokenLogprob(t) }
            }
        case .ready(let r):
            w.u32(r.workerID)
            w.u32(UInt32(bitPattern: r.pid))
            w.u32(UInt32(bitPattern: r.numaNode))
            w.u32(r.contextLength)
            try w.string(r.modelName, field: "model_name", limit: 1024)
            try w.count(r.cpus.count, field: "cpus", limit: 4096)
            for c in r.cpus { w.u32(UInt32(bitPattern: c)) }
        }
    }

    /// Encodes into a fresh buffer (tests and cold paths).
    public func encoded() throws(WireError) -> [UInt8] {
        var w = WireWriter()
        try encode(into: &w)
        return w.bytes
    }

    /// Decodes a payload of the given ring record type. Never reads outside `payload`.
    public static func decode(type rawType: UInt32, payload: UnsafeRawBufferPointer) throws(WireError) -> Record {
        guard let type = RecordType(rawValue: rawType) else { throw .unknownType(rawType) }
        var r = WireReader(payload)
        let record: Record
        switch type {
        case .submit:
            let id = try r.u64("request_id")
            let kindRaw = try r.u8("kind")
            guard let kind = PromptKind(rawValue: kindRaw) else { throw .invalidValue(field: "kind", value: UInt64(kindRaw)) }
            let session = try r.string("session_key", limit: WireLimits.maxSessionKey)
            var s = WireSampling()
            s.temperature = try r.f32("temperature")
            s.topP = try r.f32("top_p")
            s.minP = try r.f32("min_p")
            s.topK = Int32(bitPattern: try r.u32("top_k"))
            s.maxTokens = try r.u32("max_tokens")
            let hasSeed = try r.bool("has_seed")
            let seed = try r.u64("seed")
            s.seed = hasSeed ? seed : nil
            let nStop = try r.count("stop", limit: WireLimits.maxStops)
            if nStop > 0 { s.stop.reserveCapacity(nStop) }   // (an empty reserve still costs a call)
            for _ in 0..<nStop { s.stop.append(try r.string("stop", limit: WireLimits.maxStopLength)) }
            let lp = try r.u8("logprobs")
            if lp > 0 {
                guard Int(lp) - 1 <= WireLimits.maxTopLogprobs else { throw .invalidValue(field: "logprobs", value: UInt64(lp)) }
                s.logprobs = lp - 1
            }
            s.presencePenalty = try r.f32("presence_penalty")
            s.frequencyPenalty = try r.f32("frequency_penalty")
            let nBias = try r.count("logit_bias", limit: WireLimits.maxLogitBiases)
            try r.need(nBias * 8, "logit_bias")
            if nBias > 0 { s.logitBias.reserveCapacity(nBias) }
            for _ in 0..<nBias {
                s.logitBias.append(WireLogitBias(token: Int32(bitPattern: try r.u32("logit_bias")), bias: try r.f32("logit_bias")))
            }
            s.jsonObject = try r.bool("json_object")
            s.jsonSchema = try r.bytes("json_schema", limit: WireLimits.maxSchemaBytes)
            let prompt = try r.string("prompt", limit: WireLimits.maxText)
            let nMsg = try r.count("messages", limit: WireLimits.maxMessages)
            // Each message needs at least 8 bytes (two lengths): refuse absurd counts before reserving.
            try r.need(nMsg * 8, "messages")
            var messages: [WireMessage] = []
            if nMsg > 0 { messages.reserveCapacity(nMsg) }
            for _ in 0..<nMsg {
                let role = try r.string("role", limit: 32)
                let content = try r.string("content", limit: WireLimits.maxText)
                messages.append(WireMessage(role: role, content: content))
            }
            let nTok = try r.count("prompt_tokens", limit: WireLimits.maxTokens)
            try r.need(nTok * 4, "prompt_tokens")
            var promptTokens: [Int32] = []
            if nTok > 0 {
                promptTokens = [Int32](repeating: 0, count: nTok)
                for i in 0..<nTok { promptTokens[i] = Int32(bitPattern: try r.u32("prompt_tokens")) }
            }
            record = .submit(SubmitRecord(requestID: id, kind: kind, sessionKey: session, sampling: s,
                                          prompt: prompt, messages: messages, promptTokens: promptTokens))
        case .cancel:
            record = .cancel(CancelRecord(requestID: try r.u64("request_id")))
        case .tokenize:
            let id = try r.u64("request_id")
            let add = try r.bool("add_special")
            let parse = try r.bool("parse_special")
            let content = try r.string("content", limit: WireLimits.maxText)
            record = .tokenize(TokenizeRecord(requestID: id, addSpecial: add, parseSpecial: parse, content: content))
        case .detokenize, .tokens:
            let id = try r.u64("request_id")
            let n = try r.count("tokens", limit: WireLimits.maxTokens)
            try r.need(n * 4, "tokens")
            var tokens = [Int32](repeating: 0, count: n)
            for i in 0..<n { tokens[i] = Int32(bitPattern: try r.u32("tokens")) }
            let rec = TokensRecord(requestID: id, tokens: tokens)
            record = type == .tokens ? .tokens(rec) : .detokenize(rec)
        case .delta:
            let id = try r.u64("request_id")
            let n = try r.u32("completion_tokens")
            record = .delta(DeltaRecord(requestID: id, completionTokens: n, text: try r.string("text", limit: WireLimits.maxText)))
        case .done:
            let id = try r.u64("request_id")
            let fr = try r.u8("finish_reason")
            guard let finish = FinishReason(rawValue: fr) else { throw .invalidValue(field: "finish_reason", value: UInt64(fr)) }
            record = .done(DoneRecord(requestID: id, finish: finish,
                                      promptTokens: try r.u32("prompt_tokens"),
                                      completionTokens: try r.u32("completion_tokens"),
                                      cachedTokens: try r.u32("cached_tokens"),
                                      firstTokenNanos: try r.u64("first_token_ns"),
                                      totalNanos: try r.u64("total_ns")))
        case .error:
            let id = try r.u64("request_id")
            let code = WireErrorCode(raw: try r.u16("code"))
            record = .error(ErrorRecord(requestID: id, code: code, message: try r.string("message", limit: 4096)))
        case .text:
            let id = try r.u64("request_id")
            record = .text(TextRecord(requestID: id, text: try r.string("text", limit: WireLimits.maxText)))
        case .logprobs:
            let id = try r.u64("request_id")
            let n = try r.count("entries", limit: WireLimits.maxLogprobEntries)
            // Each entry needs at least 16 bytes (token, length, logprob, top count): no absurd reserve.
            try r.need(n * 16, "entries")
            var entries: [LogprobEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                let sampled = try r.tokenLogprob()
                let k = try r.count("top", limit: WireLimits.maxTopLogprobs)
                var top: [WireTokenLogprob] = []
                top.reserveCapacity(k)
                for _ in 0..<k { top.append(try r.tokenLogprob()) }
                entries.append(LogprobEntry(sampled: sampled, top: top))
            }
            record = .logprobs(LogprobsRecord(requestID: id, entries: entries))
        case .ready:
            let wid = try r.u32("worker_id")
            let pid = Int32(bitPattern: try r.u32("pid"))
            let node = Int32(bitPattern: try r.u32("numa_node"))
            let ctx = try r.u32("context_length")
            let name = try r.string("model_name", limit: 1024)
            let n = try r.count("cpus", limit: 4096)
            try r.need(n * 4, "cpus")
            var cpus: [Int32] = []
            cpus.reserveCapacity(n)
            for _ in 0..<n { cpus.append(Int32(bitPattern: try r.u32("cpus"))) }
            record = .ready(ReadyRecord(workerID: wid, pid: pid, numaNode: node, contextLength: ctx,
                                        modelName: name, cpus: cpus))
        }
        try r.finish()
        return record
    }

    /// Convenience for tests and cold paths.
    public static func decode(type: UInt32, bytes: [UInt8]) throws(WireError) -> Record {
        let result: Result<Record, WireError> = bytes.withUnsafeBytes { buf in
            do throws(WireError) { return .success(try decode(type: type, payload: buf)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
