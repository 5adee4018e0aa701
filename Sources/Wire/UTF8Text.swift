// Self-contained (no other Wire types): the front's fuzz target compiles this file into its own module.

/// Strict UTF-8 bytes → String for the per-request paths (record strings here, JSON strings in the front).
public enum UTF8Text {
    /// The string, or nil if `bytes` is not valid UTF-8. ASCII (the common case) is recognised 8 bytes at a
    /// time and built with `String(decoding:)` (~60 ns for a short string, against ~140 ns for
    /// `String(validating:)`, which is generic over the encoding and looks up runtime metadata on each call);
    /// anything else goes through `String(validating:)`.
    public static func string(_ bytes: UnsafeRawBufferPointer) -> String? {
        let n = bytes.count
        if n == 0 { return "" }
        var high: UInt64 = 0
        var i = 0
        while i + 8 <= n {
            high |= bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < n {
            high |= UInt64(bytes[i])
            i += 1
        }
        if high & 0x8080_8080_8080_8080 == 0 { return String(decoding: bytes, as: UTF8.self) }
        return String(validating: bytes, as: UTF8.self)
    }
}
