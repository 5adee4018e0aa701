/// Finds stop strings in streamed text.
///
/// Pieces of generated text go in through `push`; what comes out is the text that can safely be
/// shown. Text that might be the beginning of a stop string is held back until it is known either
/// to complete a stop string or not to. The result does not depend on how the text was split into
/// pieces: it is always the text before the earliest-starting occurrence of any stop string in the
/// whole stream (the shortest stop string when several start at the same place), or the whole text
/// when none occurs.
///
/// Matching is on UTF-8 bytes (exact, no Unicode normalisation). Pieces are whole characters (as
/// StreamingDetokenizer produces), and a stop string starts with a character's first byte, so every
/// cut falls on a character boundary.
public struct StopMatcher: Sendable {
    public struct Output: Sendable, Equatable {
        /// Text that is final and can be emitted.
        public var text: String
        /// The stop string that ended generation, if one matched (text is what preceded it).
        public var stop: String?
        public init(text: String, stop: String?) { self.text = text; self.stop = stop }
    }

    /// Stop strings (non-empty), shortest first, as bytes, with their original text.
    private let stops: [(bytes: [UInt8], text: String)]
    /// Text received but not yet emitted.
    private var held: [UInt8] = []
    public private(set) var isStopped = false

    public init(stops: [String]) {
        // Most requests have none: skip the filter/sort chain (each step of it a generic call) on their path.
        if stops.isEmpty { self.stops = []; return }
        self.stops = stops.filter { !$0.isEmpty }.map { (Array($0.utf8), $0) }
            .enumerated().sorted { a, b in
                a.element.0.count != b.element.0.count ? a.element.0.count < b.element.0.count : a.offset < b.offset
            }.map { $0.element }
    }

    /// Whether any stop strings are set (with none, push returns every piece unchanged).
    public var isEmpty: Bool { stops.isEmpty }

    /// Feeds the next piece. After a stop has matched, further pieces are ignored.
    public mutating func push(_ piece: String) -> Output {
        if isStopped { return Output(text: "", stop: nil) }
        if stops.isEmpty { return Output(text: piece, stop: nil) }
        held.append(contentsOf: piece.utf8)
        return scan(endOfStream: false)
    }

    /// Ends the stream: releases the held text, or the text before a stop string that it completes.
    public mutating func finish() -> Output {
        if isStopped { return Output(text: "", stop: nil) }
        return scan(endOfStream: true)
    }

    private mutating func scan(endOfStream: Bool) -> Output {
        let n = held.count
        // Earliest complete match (shortest stop first at the same position).
        var match: (at: Int, stop: Int)? = nil
        search: for p in 0..<n {
            for (k, s) in stops.enumerated() where p + s.bytes.count <= n && Self.equal(held, p, s.bytes, s.bytes.count) {
                match = (p, k)
                break search
            }
        }
        // Earliest position before that which could still begin a stop string.
        let limit = match?.at ?? n
        if !endOfStream {
            for q in 0..<limit {
                let rest = n - q
                if stops.contains(where: { rest < $0.bytes.count && Self.equal(held, q, $0.bytes, rest) }) {
                    let text = String(decoding: held[..<q], as: UTF8.self)
                    held.removeFirst(q)
                    return Output(text: text, stop: nil)
                }
            }
        }
        if let m = match {
            let text = String(decoding: held[..<m.at], as: UTF8.self)
            held.removeAll()
            isStopped = true
            return Output(text: text, stop: stops[m.stop].text)
        }
        let text = String(decoding: held, as: UTF8.self)
        held.removeAll(keepingCapacity: true)
        return Output(text: text, stop: nil)
    }

    /// held[at ..< at + count] == pattern[0 ..< count]
    @inline(__always) private static func equal(_ held: [UInt8], _ at: Int, _ pattern: [UInt8], _ count: Int) -> Bool {
        var j = 0
        while j < count {
            if held[at + j] != pattern[j] { return false }
            j += 1
        }
        return true
    }
}
