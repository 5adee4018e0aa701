/// Turns generated token ids into text as they arrive, releasing only complete UTF-8 characters.
///
/// A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often split
/// over 2-3 tokens). `append` returns the text that is complete so far and holds back a trailing,
/// valid-but-unfinished sequence (at most 3 bytes) until the next token completes it. Invalid bytes
/// become U+FFFD as soon as they are known to be invalid. `finish` releases what is still held
/// (an unfinished sequence becomes U+FFFD). Concatenating every `append` and the `finish` result gives
/// exactly `tokenizer.decode(allIds)`. Ids outside the vocabulary contribute nothing.
public struct StreamingDetokenizer: Sendable {
    public let tokenizer: Tokenizer
    /// Undecoded bytes: empty or an unfinished UTF-8 prefix between calls (capacity kept).
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer) {
        self.tokenizer = tokenizer
        pending.reserveCapacity(64)
    }

    /// Adds one token; returns the text that became complete (often the whole token, sometimes "").
    public mutating func append(_ id: Int32) -> String {
        tokenizer.appendTokenBytes(id, to: &pending)
        let ready = pending.withUnsafeBufferPointer { UTF8Stream.decodablePrefixLength($0) }
        if ready == 0 { return "" }
        let text = String(decoding: pending[..<ready], as: UTF8.self)
        pending.removeFirst(ready)
        return text
    }

    /// Releases whatever is held (as U+FFFD when it is an unfinished sequence) and resets.
    public mutating func finish() -> String {
        defer { pending.removeAll(keepingCapacity: true) }
        return pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
    }

    /// Bytes currently held back (0...3 between calls).
    public var heldByteCount: Int { pending.count }
}
