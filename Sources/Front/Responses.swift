// HTTP response and OpenAI response-body encoding. Everything is appended to byte arrays the caller reuses.
import Wire   // ByteWriter

enum HTTPStatus {
    static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 417: return "Expectation Failed"
        case 431: return "Request Header Fields Too Large"
        case 499: return "Client Closed Request"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Status"
        }
    }
}

enum ResponseWriter {
    /// Status line and headers, ending with the empty line. `contentLength` nil + `chunked` false means the
    /// body runs until the connection closes (HTTP/1.0 streams).
    static func head(_ out: inout ByteWriter, status: Int, contentType: String?, contentLength: Int?, chunked: Bool,
                     keepAlive: Bool, worker: Int?, requestID: UInt64? = nil, extra: [(String, String)] = []) {
        // Appended piece by piece (no string interpolation): this runs once per response on the event loop.
        if status == 200 && contentType == "application/json" && !chunked && keepAlive && extra.isEmpty,
           let contentLength, let worker {
            // The routed non-streaming answer, the most common head: two constant runs and two numbers.
            out.append("HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: application/json\r\nContent-Length: ")
            out.appendDecimal(contentLength)
            out.append("\r\nConnection: keep-alive\r\nX-Switchyard-Worker: ")
            out.appendDecimal(worker)
            if let requestID { out.append("\r\nX-Request-Id: req-"); out.appendDecimal(Int(truncatingIfNeeded: requestID)) }
            out.append("\r\n\r\n")
            return
        }
        if status == 200 {
            out.append("HTTP/1.1 200 OK\r\n")
        } else {
            out.append(Array("HTTP/1.1 \(status) \(HTTPStatus.reason(status))\r\n".utf8))
        }
        out.append("Server: switchyard\r\n")
        if let contentType {
            if contentType == "application/json" { out.append("Content-Type: application/json\r\n") } else {
                out.append("Content-Type: "); out.append(Array(contentType.utf8)); out.append("\r\n")
            }
        }
        if let contentLength { out.append("Content-Length: "); out.appendDecimal(contentLength); out.append("\r\n") }
        if chunked { out.append("Transfer-Encoding: chunked\r\n") }
        if keepAlive { out.append("Connection: keep-alive\r\n") } else { out.append("Connection: close\r\n") }
        if let worker { out.append("X-Switchyard-Worker: "); out.appendDecimal(worker); out.append("\r\n") }
        if let requestID { out.append("X-Request-Id: req-"); out.appendDecimal(Int(truncatingIfNeeded: requestID)); out.append("\r\n") }
        for (k, v) in extra { out.append(Array("\(k): \(v)\r\n".utf8)) }
        out.append("\r\n")
    }

    /// `headOnly`: the answer to a HEAD request, the head (with the body's Content-Length) without the body.
    static func full(_ out: inout ByteWriter, status: Int, contentType: String, body: UnsafeRawBufferPointer,
                     keepAlive: Bool, worker: Int?, requestID: UInt64? = nil, extra: [(String, String)] = [],
                     headOnly: Bool = false) {
        head(&out, status: status, contentType: contentType, contentLength: body.count, chunked: false,
             keepAlive: keepAlive, worker: worker, requestID: requestID, extra: extra)
        if !headOnly { out.append(body) }
    }

    static func full(_ out: inout ByteWriter, status: Int, contentType: String, body: [UInt8], keepAlive: Bool,
                     worker: Int?, requestID: UInt64? = nil, extra: [(String, String)] = [], headOnly: Bool = false) {
        body.withUnsafeBytes {
            full(&out, status: status, contentType: contentType, body: $0, keepAlive: keepAlive, worker: worker,
                 requestID: requestID, extra: extra, headOnly: headOnly)
        }
    }

    /// {"error":{"message":…,"type":…,"param":…,"code":…}}
    static func errorBody(message: String, type: String, param: String?, code: String) -> [UInt8] {
        var w = JSONWriter()
        w.raw("{\"error\":{\"message\":"); w.string(message)
        w.raw(",\"type\":"); w.string(type)
        w.raw(",\"param\":")
        if let param { w.string(param) } else { w.raw("null") }
        w.raw(",\"code\":"); w.string(code)
        w.raw("}}")
        return w.bytes
    }

    static func errorType(for status: Int) -> String {
        status >= 500 ? "server_error" : "invalid_request_error"
    }

    /// One HTTP/1.1 chunk wrapping `payload`: its size in hex, CRLF, the bytes, CRLF.
    static func chunk(_ out: inout ByteWriter, _ payload: UnsafeRawBufferPointer) {
        if payload.isEmpty { return }   // an empty chunk would end the body
        out.appendHex(payload.count)
        out.append("\r\n")
        out.append(payload)
        out.append("\r\n")
    }

    static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
    static let done: [UInt8] = Array("data: [DONE]\n\n".utf8)
}

/// A forced tool call's answer as OpenAI returns it: `{"id","type":"function","function":{"name","arguments"}}`
/// (arguments: the JSON text of the arguments object).
struct ToolCall: Equatable {
    var id: String
    var name: String
    var arguments: String

    /// Reads an answer that is a call: one object of exactly `"name"` (a string) and `"arguments"` (an
    /// object), surrounding whitespace allowed. The arguments are passed on as the model wrote them (numbers
    /// keep their digits). A forced call's answer is that shape by construction (the grammar constrained
    /// it); with `names` (tool_choice auto, a free answer) the function must be one of them and the
    /// arguments must parse. nil if it is not a call (an answer cut short, or text).
    static func parse(_ text: String, names: [String]? = nil) -> ToolCall? {
        let b = Array(text.utf8)
        guard let fields = topLevelFields(b), fields.count == 2 else { return nil }
        var name: String? = nil, args: Range<Int>? = nil
        for (key, range) in fields {
            switch key {
            case "name":
                guard name == nil, case .string(let n)? = try? JSON.parse(Array(b[range])) else { return nil }
                name = n
            case "arguments":
                guard args == nil, b[range.lowerBound] == 0x7B else { return nil }
                args = range
            default: return nil
            }
        }
        guard let name, let args, names?.contains(name) ?? true else { return nil }
        let arguments = Array(b[args])
        if names != nil { guard (try? JSON.parse(arguments)) != nil else { return nil } }
        return ToolCall(id: newID(), name: name, arguments: String(decoding: arguments, as: UTF8.self))
    }

    /// A call id ("call_" and 24 random hex digits: unique across requests and server runs).
    static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        let (a, b) = (g.next() as UInt64, g.next() as UInt32)
        let hex = String(a, radix: 16), tail = String(b, radix: 16)
        return "call_" + String(repeating: "0", count: 16 - hex.count) + hex + String(repeating: "0", count: 8 - tail.count) + tail
    }

    /// The keys of a JSON object's top level (decoded) and the byte ranges of their values, read without
    /// parsing the values (only their extent); nil if `b` is not one object.
    static func topLevelFields(_ b: [UInt8]) -> [(String, Range<Int>)]? {
        var i = 0
        func ws() { while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 } }
        /// Moves past the string that starts at i.
        func string() -> Bool {
            i += 1
            while i < b.count {
                if b[i] == 0x5C { i += 2; continue }
                if b[i] == 0x22 { i += 1; return true }
                i += 1
            }
            return false
        }
        func value() -> Bool {
            guard i < b.count else { return false }
            switch b[i] {
            case 0x22: return string()
            case 0x7B, 0x5B:
                var depth = 0
                while i < b.count {
                    switch b[i] {
                    case 0x22: guard string() else { return false }; continue
                    case 0x7B, 0x5B: depth += 1
                    case 0x7D, 0x5D: depth -= 1; if depth == 0 { i += 1; return true }
                    default: break
                    }
                    i += 1
                }
                return false
            default:
                let start = i
                while i < b.count, ![0x2C, 0x7D, 0x5D, 0x20, 0x0A, 0x0D, 0x09].contains(b[i]) { i += 1 }
                return i > start
            }
        }
        ws()
        guard i < b.count, b[i] == 0x7B else { return nil }
        i += 1
        var out: [(String, Range<Int>)] = []
        ws()
        if i < b.count, b[i] == 0x7D { i += 1 } else {
            while true {
                ws()
                guard i < b.count, b[i] == 0x22 else { return nil }
                let k0 = i
                guard string(), case .string(let key)? = try? JSON.parse(Array(b[k0..<i])) else { return nil }
                ws()
                guard i < b.count, b[i] == 0x3A else { return nil }
                i += 1
                ws()
                let v0 = i
                guard value() else { return nil }
                out.append((key, v0..<i))
                ws()
                guard i < b.count else { return nil }
                if b[i] == 0x2C { i += 1; continue }
                guard b[i] == 0x7D else { return nil }
                i += 1
                break
            }
        }
        ws()
        return i == b.count ? out : nil
    }

    func write(_ w: inout JSONWriter, index: Int?) {
        w.raw("{")
        if let index { w.raw("\"index\":"); w.int(index); w.raw(",") }
        w.raw("\"id\":"); w.string(id)
        w.raw(",\"type\":\"function\",\"function\":{\"name\":"); w.string(name)
        w.raw(",\"arguments\":"); w.string(arguments); w.raw("}}")
    }
}

/// The fixed parts of one generation's response bodies.
struct CompletionIdentity {
    var number: UInt64      // the response id is "chatcmpl-<number>" or "cmpl-<number>"
    var created: Int
    var model: String
    var chat: Bool
}

enum OpenAIEncoder {
    static func usage(_ w: inout JSONWriter, _ u: Usage) {
        w.raw("{\"prompt_tokens\":"); w.int(u.promptTokens)
        w.raw(",\"completion_tokens\":"); w.int(u.completionTokens)
        w.raw(",\"total_tokens\":"); w.int(u.promptTokens + u.completionTokens)
        w.raw(",\"prompt_tokens_details\":{\"cached_tokens\":"); w.int(u.cachedTokens)
        w.raw("}}")
    }

    private static func prefix(_ w: inout JSONWriter, _ c: CompletionIdentity, chunk: Bool) {
        let idStart: StaticString = c.chat ? "{\"id\":\"chatcmpl-" : "{\"id\":\"cmpl-"
        w.raw(idStart); w.int(Int(c.number)); w.raw("\"")
        w.raw(",\"object\":")
        if c.chat { w.raw(chunk ? "\"chat.completion.chunk\"" : "\"chat.completion\"") } else { w.raw("\"text_completion\"") }
        w.raw(",\"created\":"); w.int(c.created)
        w.raw(",\"model\":"); w.string(c.model)
    }

    /// Non-streaming response body, appended to `w` (the event loop reuses one writer: no buffer per response).
    /// `logprobs`: the answer's token steps and the alternatives asked for per token (nil: not asked for).
    static func completion(_ c: CompletionIdentity, text: String, finish: FinishReason, usage u: Usage,
                           logprobs: (steps: ArraySlice<LogprobStep>, top: Int)? = nil, toolCall: ToolCall? = nil,
                           into w: inout JSONWriter) {
        prefix(&w, c, chunk: false)
        w.raw(",\"choices\":[{\"index\":0,")
        if c.chat, let toolCall {
            w.raw("\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[")
            toolCall.write(&w, index: nil)
            w.raw("]},")
        } else if c.chat {
            w.raw("\"message\":{\"role\":\"assistant\",\"content\":"); w.string(text); w.raw("},")
        } else {
            w.raw("\"text\":"); w.string(text); w.raw(",")
        }
        w.raw("\"logprobs\":")
        if let logprobs {
            var offset = 0
            Self.logprobs(&w, chat: c.chat, logprobs.steps, top: logprobs.top, textOffset: &offset)
        } else {
            w.raw("null")
        }
        w.raw(",\"finish_reason\":"); w.string(finish.rawValue)
        w.raw("}],\"usage\":"); usage(&w, u)
        w.raw("}")
    }

    /// The streamed chunk carrying a whole tool call (`delta.tool_calls[0]` with id, name and arguments).
    static func toolCallChunk(_ c: CompletionIdentity, _ call: ToolCall, nullUsage: Bool, into w: inout JSONWriter) {
        w.raw("data: ")
        prefix(&w, c, chunk: true)
        w.raw(",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[")
        call.write(&w, index: 0)
        w.raw("]},\"logprobs\":null,\"finish_reason\":null")
        w.raw(nullUsage ? "}],\"usage\":null}\n\n" : "}]}\n\n")
    }

    /// One SSE event `data: {...}\n\n` for a streamed delta (role: first chat chunk) or the finishing chunk.
    /// One SSE event (`data: {...}` and the blank line) of a streamed completion, appended to `w`.
    /// `nullUsage` (stream_options.include_usage): `"usage":null` on this chunk, as OpenAI writes it on
    /// every chunk before the usage chunk.
    static func streamChunk(_ c: CompletionIdentity, text: String?, role: Bool, finish: FinishReason?,
                            nullUsage: Bool = false, into w: inout JSONWriter) {
        var offset = 0
        streamChunk(c, text: text, role: role, finish: finish, nullUsage: nullUsage, logprobs: nil, textOffset: &offset, into: &w)
    }

    /// With `logprobs` (the steps this chunk carries, and the alternatives per token), the chunk's
    /// `logprobs` object; `textOffset` (completions) runs on over the stream's chunks.
    static func streamChunk(_ c: CompletionIdentity, text: String?, role: Bool, finish: FinishReason?,
                            nullUsage: Bool = false, logprobs: (steps: ArraySlice<LogprobStep>, top: Int)?,
                            textOffset: inout Int, into w: inout JSONWriter) {
        w.raw("data: ")
        prefix(&w, c, chunk: true)
        w.raw(",\"choices\":[{\"index\":0,")
        if c.chat {
            w.raw("\"delta\":{")
            var first = true
            if role { w.raw("\"role\":\"assistant\""); first = false }
            if let text { if !first { w.raw(",") }; w.raw("\"content\":"); w.string(text) }
            w.raw("},")
        } else {
            w.raw("\"text\":"); w.string(text ?? ""); w.raw(",")
        }
        w.raw("\"logprobs\":")
        if let logprobs { Self.logprobs(&w, chat: c.chat, logprobs.steps, top: logprobs.top, textOffset: &textOffset) }
        else { w.raw("null") }
        w.raw(",\"finish_reason\":")
        if let finish { w.string(finish.rawValue) } else { w.raw("null") }
        w.raw(nullUsage ? "}],\"usage\":null}\n\n" : "}]}\n\n")
    }

    /// A choice's `logprobs` object in OpenAI's two shapes.
    /// - chat: `{"content":[{"token","logprob","bytes","top_logprobs":[{"token","logprob","bytes"}]}],"refusal":null}`
    ///   with `top` alternatives per token;
    /// - completions (legacy): `{"tokens","token_logprobs","top_logprobs","text_offset"}`, each
    ///   top_logprobs entry an object of the `top` most likely tokens and the sampled one (so up to top + 1
    ///   keys, the sampled first; a token text already present is not repeated), text_offset counting characters of the
    ///   answer from `textOffset` on.
    /// A chat token's text is its bytes read as UTF-8 (a piece that is not whole characters shows U+FFFD;
    /// `bytes` has the exact bytes). The legacy shape has no `bytes`: such a piece is spelled
    /// `bytes:\xe2\x80` there, as OpenAI does, so that different pieces stay different keys. A
    /// log-probability that is not finite is written as -9999.0, as OpenAI does.
    static func logprobs(_ w: inout JSONWriter, chat: Bool, _ steps: ArraySlice<LogprobStep>, top: Int,
                         textOffset: inout Int) {
        func text(_ t: LogprobToken) -> String {
            if chat { return String(decoding: t.bytes, as: UTF8.self) }
            if let s = String(validating: t.bytes, as: UTF8.self) { return s }
            let hex: [Character] = Array("0123456789abcdef")
            var out = "bytes:"
            for b in t.bytes { out += "\\x"; out.append(hex[Int(b >> 4)]); out.append(hex[Int(b & 15)]) }
            return out
        }
        func value(_ t: LogprobToken) { w.raw(t.logprob.isFinite ? String(t.logprob) : "-9999.0") }
        func token(_ t: LogprobToken) {
            w.raw("{\"token\":"); w.string(text(t))
            w.raw(",\"logprob\":"); value(t)
            w.raw(",\"bytes\":[")
            for (k, b) in t.bytes.enumerated() { if k > 0 { w.raw(",") }; w.int(Int(b)) }
            w.raw("]")
        }
        if chat {
            w.raw("{\"content\":[")
            for (k, s) in steps.enumerated() {
                if k > 0 { w.raw(",") }
                token(s.token)
                w.raw(",\"top_logprobs\":[")
                for (j, t) in s.top.prefix(top).enumerated() {
                    if j > 0 { w.raw(",") }
                    token(t); w.raw("}")
                }
                w.raw("]}")
            }
            w.raw("],\"refusal\":null}")
            return
        }
        w.raw("{\"tokens\":[")
        for (k, s) in steps.enumerated() { if k > 0 { w.raw(",") }; w.string(text(s.token)) }
        w.raw("],\"token_logprobs\":[")
        for (k, s) in steps.enumerated() { if k > 0 { w.raw(",") }; value(s.token) }
        w.raw("],\"top_logprobs\":[")
        for (k, s) in steps.enumerated() {
            if k > 0 { w.raw(",") }
            w.raw("{")
            // The sampled token first: if another token reads the same, the sampled one's value is the key's.
            var written: [String] = []
            for t in [s.token] + s.top.prefix(top) {
                let key = text(t)
                if written.contains(key) { continue }
                if !written.isEmpty { w.raw(",") }
                written.append(key)
                w.string(key); w.raw(":"); value(t)
            }
            w.raw("}")
        }
        w.raw("],\"text_offset\":[")
        for (k, s) in steps.enumerated() {
            if k > 0 { w.raw(",") }
            w.int(textOffset)
            // Characters: every byte that does not continue a UTF-8 sequence starts one.
            for b in s.token.bytes where b & 0xC0 != 0x80 { textOffset += 1 }
        }
        w.raw("]}")
    }

    /// The include_usage chunk: empty choices and the usage object.
    static func usageChunk(_ c: CompletionIdentity, _ u: Usage, into w: inout JSONWriter) {
        w.raw("data: ")
        prefix(&w, c, chunk: true)
        w.raw(",\"choices\":[],\"usage\":"); usage(&w, u)
        w.raw("}\n\n")
    }

    /// An SSE error event for a stream that already started.
    static func streamError(message: String) -> [UInt8] {
        var out = Array("data: ".utf8)
        out += ResponseWriter.errorBody(message: message, type: "server_error", param: nil, code: "worker_error")
        out += Array("\n\n".utf8)
        return out
    }
}
