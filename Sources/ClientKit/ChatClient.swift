// OpenAI-compatible chat completions over HTTPConnection: streaming with per-chunk timestamps (for TTFT and
// inter-token latency) and non-streaming.
import Foundation

/// One chat message.
public struct ChatMessage: Sendable, Hashable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A /v1/chat/completions request.
public struct ChatRequest: Sendable, Hashable {
    public var messages: [ChatMessage]
    public var model: String?
    public var maxTokens: Int?
    public var temperature: Double?
    public var seed: Int?
    /// Sent as the X-Session-Id header and as body `session_id` and `user`.
    public var sessionID: String?
    public var stream: Bool = true
    /// Extra headers (e.g. Authorization for other servers).
    public var extraHeaders: [String: String] = [:]

    public init(messages: [ChatMessage], model: String? = nil, maxTokens: Int? = nil, temperature: Double? = nil,
                seed: Int? = nil, sessionID: String? = nil, stream: Bool = true) {
        self.messages = messages
        self.model = model
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.seed = seed
        self.sessionID = sessionID
        self.stream = stream
    }

    /// The JSON body.
    public func jsonBody() throws(ClientError) -> [UInt8] {
        // No "model" unless given: Switchyard and llama-server then use (and report) the model they serve.
        var o: [String: Any] = [
            "messages": messages.map { ["role": $0.role, "content": $0.content] },
            "stream": stream,
        ]
        if let m = model { o["model"] = m }
        if stream { o["stream_options"] = ["include_usage": true] }
        if let m = maxTokens { o["max_tokens"] = m }
        if let t = temperature { o["temperature"] = t }
        if let s = seed { o["seed"] = s }
        if let s = sessionID {
            o["session_id"] = s
            o["user"] = s
        }
        do {
            return Array(try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]))
        } catch {
            throw .badJSON("cannot encode request: \(error)")
        }
    }

    var headers: [(String, String)] {
        var h: [(String, String)] = [("Content-Type", "application/json")]
        if stream { h.append(("Accept", "text/event-stream")) }
        if let s = sessionID { h.append(("X-Session-Id", s)) }
        for (k, v) in extraHeaders.sorted(by: { $0.key < $1.key }) { h.append((k, v)) }
        return h
    }
}

/// Token accounting reported by the server (`usage`).
public struct ChatUsage: Sendable, Hashable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// usage.prompt_tokens_details.cached_tokens, when reported.
    public var cachedTokens: Int?
}

/// Result of one chat completion, with client-side timing.
public struct ChatResult: Sendable {
    /// Full assistant text.
    public var text: String
    public var finishReason: String?
    public var usage: ChatUsage?
    /// X-Switchyard-Worker response header, if any.
    public var worker: String?
    public var status: Int
    /// When the request was sent, when the response head arrived, and when each content-bearing chunk
    /// (SSE event with a non-empty delta) arrived; monotonic ns. Non-streamed: one entry at body end.
    public var sentNs: UInt64
    public var headNs: UInt64
    public var chunkNs: [UInt64]
    public var doneNs: UInt64
    /// Number of SSE events carrying content.
    public var contentChunks: Int { chunkNs.count }
    /// Raw body (non-streaming) or the concatenated `data:` payloads (streaming), for `--json`.
    public var raw: String
}

/// Chat client on one kept-alive connection. Not thread-safe: one per thread.
public final class ChatClient {
    public let connection: HTTPConnection
    public var path = "/v1/chat/completions"

    public init(endpoint: Endpoint, timeout: Double = 300) {
        connection = HTTPConnection(endpoint: endpoint, timeout: timeout)
    }

    /// Runs a request. Streaming requests call `onDelta` with each content piece as it arrives. Non-2xx
    /// statuses throw their typed error (`.serverLoading`, `.overloaded`, `.httpStatus`).
    public func complete(_ req: ChatRequest, onDelta: (String) -> Void = { _ in }) throws(ClientError) -> ChatResult {
        let body = try req.jsonBody()
        let sent = monotonicNanos()
        var headAt: UInt64 = 0
        var chunkNs: [UInt64] = []
        var text = ""
        var raw = ""
        var errorBody: [UInt8] = []
        var usage: ChatUsage?
        var finish: String?
        var parser = SSEParser()
        var parseError: ClientError?
        var isSSE = false
        let head = try connection.stream(method: "POST", path: path, headers: req.headers, body: body) { chunk in
            let now = monotonicNanos()
            // Buffer everything until we know the content type; then parse SSE incrementally.
            if !isSSE {
                errorBody.append(contentsOf: chunk)
                if errorBody.count > HTTPConnection.maxBodyBytes { return false }
                return true
            }
            return parser.feed(chunk, now: now) { ev in
                if ev.data == "[DONE]" { return true }
                raw += ev.data + "\n"
                guard let obj = try? JSONSerialization.jsonObject(with: Data(ev.data.utf8)) as? [String: Any] else {
                    parseError = .badJSON("SSE event is not a JSON object: \(ev.data.prefix(200))")
                    return false
                }
                if let e = obj["error"] {
                    let m = (e as? [String: Any])?["message"] as? String ?? "\(e)"
                    parseError = .streamError(message: m)
                    return false
                }
                if let u = ChatClient.parseUsage(obj["usage"]) { usage = u }
                if let choices = obj["choices"] as? [[String: Any]], let c = choices.first {
                    if let f = c["finish_reason"] as? String { finish = f }
                    if let d = c["delta"] as? [String: Any], let piece = d["content"] as? String, !piece.isEmpty {
                        chunkNs.append(ev.receivedAtNs)
                        text += piece
                        onDelta(piece)
                    }
                }
                return true
            }
        } onHead: { h in
            headAt = monotonicNanos()
            isSSE = (h.header("content-type") ?? "").contains("text/event-stream") && (200..<300).contains(h.status)
        }
        let done = monotonicNanos()
        if let e = parseError { throw e }
        let bodyText = String(decoding: errorBody, as: UTF8.self)
        if let e = head.error(body: bodyText) { throw e }
        if !isSSE {
            // Non-streamed JSON completion.
            guard let obj = try? JSONSerialization.jsonObject(with: Data(errorBody)) as? [String: Any] else {
                throw .badJSON("response is not a JSON object: \(bodyText.prefix(200))")
            }
            usage = ChatClient.parseUsage(obj["usage"])
            if let choices = obj["choices"] as? [[String: Any]], let c = choices.first {
                finish = c["finish_reason"] as? String
                if let m = c["message"] as? [String: Any], let s = m["content"] as? String { text = s }
            }
            if !text.isEmpty { onDelta(text) }
            chunkNs = [done]
            raw = bodyText
        }
        return ChatResult(
            text: text, finishReason: finish, usage: usage, worker: head.header("x-switchyard-worker"),
            status: head.status, sentNs: sent, headNs: headAt, chunkNs: chunkNs, doneNs: done, raw: raw)
    }

    static func parseUsage(_ any: Any?) -> ChatUsage? {
        guard let u = any as? [String: Any] else { return nil }
        let p = (u["prompt_tokens"] as? NSNumber)?.intValue ?? 0
        let c = (u["completion_tokens"] as? NSNumber)?.intValue ?? 0
        let cached = ((u["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? NSNumber)?.intValue
        return ChatUsage(promptTokens: p, completionTokens: c, cachedTokens: cached)
    }
}
