/// One server-sent event: the joined `data:` lines of one event block, stamped when its terminating blank
/// line arrived (monotonic ns).
public struct SSEEvent: Sendable, Hashable {
    public var event: String?
    public var data: String
    public var receivedAtNs: UInt64
}

/// Incremental text/event-stream parser: feed body bytes as they arrive, get events as soon as each is
/// complete. Lines end in LF or CRLF; `data:` lines of one event are joined with "\n"; comments (":")
/// and unknown fields are ignored. A line longer than `maxLineBytes` is an error (returns false).
public struct SSEParser: Sendable {
    public static let maxLineBytes = 4 * 1024 * 1024
    private var line: [UInt8] = []
    private var data: [String] = []
    private var hasData = false
    private var event: String?

    public init() {}

    /// Feeds bytes; calls `emit` for each complete event; stops and returns false if `emit` returns false
    /// or a line is too long.
    public mutating func feed(_ bytes: ArraySlice<UInt8>, now: UInt64, emit: (SSEEvent) -> Bool) -> Bool {
        for b in bytes {
            if b == 10 {
                if line.last == 13 { line.removeLast() }
                let keepGoing = processLine(now: now, emit: emit)
                line.removeAll(keepingCapacity: true)
                if !keepGoing { return false }
            } else {
                if line.count >= SSEParser.maxLineBytes { return false }
                line.append(b)
            }
        }
        return true
    }

    private mutating func processLine(now: UInt64, emit: (SSEEvent) -> Bool) -> Bool {
        if line.isEmpty {
            defer { data.removeAll(); hasData = false; event = nil }
            if hasData { return emit(SSEEvent(event: event, data: data.joined(separator: "\n"), receivedAtNs: now)) }
            return true
        }
        if line.first == 58 { return true }  // ":" comment
        let s = String(decoding: line, as: UTF8.self)
        let field: Substring
        var value: Substring
        if let colon = s.firstIndex(of: ":") {
            field = s[..<colon]
            value = s[s.index(after: colon)...]
            if value.first == " " { value = value.dropFirst() }
        } else {
            field = Substring(s)
            value = ""
        }
        switch field {
        case "data":
            data.append(String(value))
            hasData = true
        case "event": event = String(value)
        default: break
        }
        return true
    }
}
