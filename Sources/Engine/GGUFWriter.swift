// GGUF v3 writer: used by tests (synthetic models, corrupt-file suite) and `switchyard-bench make-model`.

/// Builds a GGUF v3 image in memory. Keys and tensors keep insertion order.
public struct GGUFWriter {
    public var alignment: Int = 32
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    public private(set) var tensors: [(name: String, type: GGMLType, dims: [Int], data: [UInt8])] = []

    public init(alignment: Int = 32) { self.alignment = alignment }

    public mutating func add(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }

    /// Adds a tensor; `data` must be exactly the tensor's byte size for `type` and `dims`.
    public mutating func addTensor(_ name: String, type: GGMLType, dims: [Int], data: [UInt8]) {
        tensors.append((name, type, dims, data))
    }

    /// Byte offset where each section starts in `serialize()`'s output (for corrupt-file tests).
    public struct Layout: Sendable { public var kvStart = 0, tensorInfoStart = 0, dataStart = 0, total = 0 }

    public func serialize() -> [UInt8] { serializeWithLayout().bytes }

    public func serializeWithLayout() -> (bytes: [UInt8], layout: Layout) {
        var out: [UInt8] = []
        var layout = Layout()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func str(_ s: String) { let u = Array(s.utf8); u64(UInt64(u.count)); out.append(contentsOf: u) }
        func val(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .float64(let x): u64(x.bitPattern)
            case .bool(let b): out.append(b ? 1 : 0)
            case .string(let s): str(s)
            case .array(let et, let a):
                u32(et.rawValue); u64(UInt64(a.count))
                for e in a { val(e) }
            }
        }
        u32(0x4655_4747)
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        layout.kvStart = out.count
        for (k, v) in metadata { str(k); u32(v.type.rawValue); val(v) }
        layout.tensorInfoStart = out.count
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            str(t.name)
            u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        layout.dataStart = out.count
        for (i, t) in tensors.enumerated() {
            precondition(out.count == layout.dataStart + offsets[i])
            out.append(contentsOf: t.data)
            while out.count % alignment != 0 { out.append(0) }
        }
        layout.total = out.count
        return (out, layout)
    }

    public func write(to path: String) throws {
        let bytes = serialize()
        try writeFile(path, bytes)
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Writes `bytes` to `path` (created or truncated, mode 0644).
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, errno: errno) }
    defer { close(fd) }
    var done = 0
    try bytes.withUnsafeBytes { buf in
        while done < buf.count {
            let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
            if n < 0 { if errno == EINTR { continue }; throw GGUFError.cannotOpen(path: path, errno: errno) }
            done += n
        }
    }
}
