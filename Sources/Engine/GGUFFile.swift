// GGUF v3 reader over a read-only shared mmap.
//
// Layout (all little-endian):
//   u32 magic "GGUF" | u32 version (3) | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value_type | value }          string = u64 length + UTF-8 bytes
//   tensor_count x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32)
//   data section: each tensor at data_start + offset (offset aligned to general.alignment)
//
// Every read goes through `Cursor`, which checks bounds before loading, so a truncated or corrupt file
// yields a `GGUFError` instead of an out-of-bounds read. Counts and lengths are bounded both by fixed
// limits and by the bytes actually left in the file, so absurd values fail fast without allocating.
#if canImport(Glibc)
import Glibc
#endif

/// A parsed GGUF file. Tensor bytes are views into the mapping, valid while this object lives.
/// The mapping is PROT_READ + MAP_SHARED, so every process mapping the same file shares its page cache.
public final class GGUFFile: @unchecked Sendable {
    // @unchecked Sendable: all stored properties are immutable after init; the mapping is read-only.

    /// Limits on input-derived sizes (well above anything real models use).
    public enum Limits {
        public static let maxTensors = 1 << 20
        public static let maxKeys = 1 << 20
        public static let maxStringLength = 1 << 26      // 64 MiB (chat templates are a few KiB)
        public static let maxArrayCount = 1 << 28
        public static let maxArrayDepth = 8
        public static let maxDims = 4                     // GGML_MAX_DIMS
    }

    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute file offset of the data section.
    public let dataOffset: Int
    /// The whole file.
    public let bytes: UnsafeRawBufferPointer

    private let tensorIndex: [String: Int]
    /// How to release `bytes`: munmap for files, deallocate for in-memory copies.
    private let unmap: @Sendable (UnsafeRawBufferPointer) -> Void

    /// Maps and parses the file at `path`.
    public convenience init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError.cannotOpen(path: path, errno: errno) }
        let size = Int(st.st_size)
        guard size > 0 else {
            throw GGUFError.truncated(what: "header", offset: 0, needed: 24, available: 0)
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw GGUFError.cannotMap(path: path, errno: errno)
        }
        let buf = UnsafeRawBufferPointer(start: p, count: size)
        try self.init(path: path, bytes: buf, unmap: { b in
            if let base = b.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), b.count) }
        })
    }

    /// Parses an in-memory copy of a GGUF image (tests, fuzzing).
    public convenience init(bytes image: [UInt8]) throws {
        // Allocate 64-byte aligned so tensor alignment behaves as in a page-aligned mapping.
        let m = UnsafeMutableRawBufferPointer.allocate(byteCount: max(image.count, 1), alignment: 64)
        image.withUnsafeBytes { src in if let s = src.baseAddress, let d = m.baseAddress { d.copyMemory(from: s, byteCount: src.count) } }
        let buf = UnsafeRawBufferPointer(start: m.baseAddress, count: image.count)
        do {
            try self.init(path: "<memory>", bytes: buf, unmap: { b in
                UnsafeMutableRawPointer(mutating: b.baseAddress)?.deallocate()
            })
        }
    }

    private init(path: String, bytes buf: UnsafeRawBufferPointer,
                 unmap: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) throws {
        do {
            var c = Cursor(base: buf)
            let magic = try c.u32("magic")
            guard magic == 0x4655_4747 else { throw GGUFError.badMagic(magic) }  // "GGUF" little-endian
            let version = try c.u32("version")
            guard version == 3 else { throw GGUFError.unsupportedVersion(version) }
            let nTensors = try c.count("tensor count", limit: Limits.maxTensors, minBytesEach: 8 + 4 + 4 + 8)
            let nKeys = try c.count("metadata count", limit: Limits.maxKeys, minBytesEach: 8 + 4 + 1)

            var metadata: [String: GGUFValue] = [:]
            var keys: [String] = []
            metadata.reserveCapacity(nKeys)
            keys.reserveCapacity(nKeys)
            for i in 0..<nKeys {
                let key = try c.string("metadata key #\(i)")
                let rawType = try c.u32("type of '\(key)'")
                guard let type = GGUFValueType(rawValue: rawType) else {
                    throw GGUFError.unknownValueType(key: key, raw: rawType)
                }
                let value = try c.value(type, key: key, depth: 0)
                guard metadata.updateValue(value, forKey: key) == nil else { throw GGUFError.duplicateKey(key) }
                keys.append(key)
            }

            var alignment = 32
            if let a = metadata["general.alignment"] {
                guard let v = a.int, v > 0 else { throw GGUFError.wrongMetadataType(key: "general.alignment", expected: "a positive integer") }
                guard v <= 65536, v & (v - 1) == 0 else { throw GGUFError.badAlignment(UInt64(v)) }
                alignment = v
            }

            // Tensor infos: offsets are validated after we know where the data section starts.
            struct Raw { var name: String; var type: GGMLType; var dims: [Int]; var offset: UInt64; var size: Int }
            var raws: [Raw] = []
            raws.reserveCapacity(nTensors)
            var index: [String: Int] = [:]
            for i in 0..<nTensors {
                let name = try c.string("tensor #\(i) name")
                let nd = try c.u32("dims count of '\(name)'")
                guard nd >= 1, nd <= UInt32(Limits.maxDims) else {
                    throw GGUFError.badDims(tensor: name, dims: [], reason: "\(nd) dimensions (1...\(Limits.maxDims) allowed)")
                }
                var rawDims: [UInt64] = []
                for d in 0..<Int(nd) { rawDims.append(try c.u64("dim \(d) of '\(name)'")) }
                var dims: [Int] = []
                var elements = 1
                for d in rawDims {
                    guard d >= 1, d <= UInt64(Int32.max) else {
                        throw GGUFError.badDims(tensor: name, dims: rawDims, reason: "each dim must be in 1...\(Int32.max)")
                    }
                    let (e, o) = elements.multipliedReportingOverflow(by: Int(d))
                    guard !o, e <= (1 << 40) else { throw GGUFError.badDims(tensor: name, dims: rawDims, reason: "element count overflows") }
                    elements = e
                    dims.append(Int(d))
                }
                let rawType = try c.u32("type of '\(name)'")
                guard let type = GGMLType(rawValue: rawType) else { throw GGUFError.unknownTensorType(tensor: name, raw: rawType) }
                guard let rowBytes = type.rowBytes(dims[0]) else {
                    throw GGUFError.rowNotBlockMultiple(tensor: name, type: type, rowLength: dims[0])
                }
                let (size, o) = rowBytes.multipliedReportingOverflow(by: elements / dims[0])
                guard !o else { throw GGUFError.arithmeticOverflow(what: "byte size of '\(name)'") }
                let offset = try c.u64("offset of '\(name)'")
                guard offset % UInt64(alignment) == 0 else {
                    throw GGUFError.misalignedTensor(tensor: name, offset: offset, alignment: alignment)
                }
                guard index.updateValue(raws.count, forKey: name) == nil else { throw GGUFError.duplicateTensor(name) }
                raws.append(Raw(name: name, type: type, dims: dims, offset: offset, size: size))
            }

            // Data section starts at the next multiple of `alignment` after the header.
            let (padded, o1) = c.offset.addingReportingOverflow(alignment - 1)
            guard !o1 else { throw GGUFError.arithmeticOverflow(what: "data section offset") }
            let dataOffset = padded / alignment * alignment
            // A file without tensors may end right after the header (no padding).
            let dataSize = dataOffset <= buf.count ? buf.count - dataOffset : 0
            if nTensors > 0 && dataOffset > buf.count {
                throw GGUFError.truncated(what: "data section", offset: c.offset, needed: dataOffset - c.offset,
                                          available: buf.count - c.offset)
            }

            var infos: [GGUFTensorInfo] = []
            infos.reserveCapacity(raws.count)
            for r in raws {
                guard r.offset <= UInt64(dataSize), r.size <= dataSize - Int(r.offset) else {
                    throw GGUFError.tensorOutOfBounds(tensor: r.name, offset: r.offset, size: r.size, dataSize: dataSize)
                }
                infos.append(GGUFTensorInfo(name: r.name, type: r.type, dims: r.dims, offset: Int(r.offset), byteSize: r.size))
            }
            // Overlap check on tensors sorted by offset (zero-size tensors cannot exist: dims >= 1).
            let sorted = infos.sorted { $0.offset < $1.offset }
            if sorted.count > 1 {
                for i in 1..<sorted.count where sorted[i - 1].offset + sorted[i - 1].byteSize > sorted[i].offset {
                    throw GGUFError.overlappingTensors(sorted[i - 1].name, sorted[i].name)
                }
            }

            self.path = path
            self.version = version
            self.metadata = metadata
            self.metadataKeys = keys
            self.tensors = infos
            self.tensorIndex = index
            self.alignment = alignment
            self.dataOffset = dataOffset
            self.bytes = buf
            self.unmap = unmap
        } catch {
            unmap(buf)
            throw error
        }
    }

    deinit { unmap(bytes) }

    // MARK: Tensors

    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The tensor's bytes inside the mapping (bounds validated at open).
    public func data(for info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[(dataOffset + info.offset)..<(dataOffset + info.offset + info.byteSize)])
    }

    // MARK: Typed metadata accessors (nil when missing or of another type)

    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func float(_ key: String) -> Double? { metadata[key]?.double }
    public func bool(_ key: String) -> Bool? { metadata[key]?.bool }
    public func stringArray(_ key: String) -> [String]? { metadata[key]?.stringArray }
    public func intArray(_ key: String) -> [Int]? { metadata[key]?.intArray }
    public func floatArray(_ key: String) -> [Double]? { metadata[key]?.floatArray }

    /// Throwing variants naming the missing or mistyped key.
    public func requireString(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let s = v.string else { throw GGUFError.wrongMetadataType(key: key, expected: "a string") }
        return s
    }
    public func requireInt(_ key: String) throws -> Int {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let i = v.int else { throw GGUFError.wrongMetadataType(key: key, expected: "an integer") }
        return i
    }
    public func requireFloat(_ key: String) throws -> Double {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        guard let d = v.double else { throw GGUFError.wrongMetadataType(key: key, expected: "a number") }
        return d
    }
}

/// Bounds-checked little-endian reader over the file image.
private struct Cursor {
    let base: UnsafeRawBufferPointer
    var offset = 0

    var remaining: Int { base.count - offset }

    func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n <= remaining else {
            throw GGUFError.truncated(what: what(), offset: offset, needed: n, available: remaining)
        }
    }

    mutating func load<T: FixedWidthInteger>(_ t: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, what()) }

    /// A u64 count bounded by `limit` and by what the remaining bytes could possibly hold.
    mutating func count(_ what: String, limit: Int, minBytesEach: Int) throws -> Int {
        let n = try u64(what)
        guard n <= UInt64(limit) else { throw GGUFError.countTooLarge(what: what, count: n, limit: limit) }
        let fit = remaining / minBytesEach
        guard n <= UInt64(fit) else {
            throw GGUFError.truncated(what: "\(what) (\(n) entries)", offset: offset, needed: Int(n) * minBytesEach, available: remaining)
        }
        return Int(n)
    }

    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let n = try u64("length of \(what())")
        guard n <= UInt64(GGUFFile.Limits.maxStringLength) else {
            throw GGUFError.stringTooLong(what: what(), length: n, limit: GGUFFile.Limits.maxStringLength)
        }
        try need(Int(n), what())
        let start = offset
        let slice = UnsafeRawBufferPointer(rebasing: base[start..<(start + Int(n))])
        offset += Int(n)
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw GGUFError.invalidUTF8(what: what(), offset: start)
        }
        return s
    }

    mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        let w = "value of '\(key)'"
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, w))
        case .int8: return .int8(try load(Int8.self, w))
        case .uint16: return .uint16(try load(UInt16.self, w))
        case .int16: return .int16(try load(Int16.self, w))
        case .uint32: return .uint32(try load(UInt32.self, w))
        case .int32: return .int32(try load(Int32.self, w))
        case .uint64: return .uint64(try load(UInt64.self, w))
        case .int64: return .int64(try load(Int64.self, w))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, w)))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, w)))
        case .bool:
            let b = try load(UInt8.self, w)
            guard b <= 1 else { throw GGUFError.invalidValue(key: key, reason: "bool byte \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try string(w))
        case .array:
            guard depth < GGUFFile.Limits.maxArrayDepth else { throw GGUFError.nestingTooDeep(key: key) }
            let rawType = try u32("array element type of '\(key)'")
            guard let et = GGUFValueType(rawValue: rawType) else { throw GGUFError.unknownValueType(key: key, raw: rawType) }
            let n = try count("array '\(key)'", limit: GGUFFile.Limits.maxArrayCount, minBytesEach: et.minEncodedBytes)
            var out: [GGUFValue] = []
            out.reserveCapacity(n)
            for _ in 0..<n { out.append(try value(et, key: key, depth: depth + 1)) }
            return .array(elementType: et, out)
        }
    }
}
