// libFuzzer entry: feeds arbitrary bytes to the HTTP parser (whole, and split into two reads at a
// data-derived point) and every parsed body to the JSON reader and the API decoder (with its json_schema
// compiler, whose programs must decode again). Any crash, hang, or
// out-of-bounds access (ASan) is a bug; every input must end in .incomplete, .complete or .failure.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var limits = HTTPLimits()
    limits.maxHeaderBytes = 4096
    limits.maxBodyBytes = 64 * 1024
    var p = HTTPRequestParser(limits: limits)
    // Whole input, then requests pipelined after it.
    var offset = 0
    var rounds = 0
    while offset < bytes.count && rounds < 64 {
        rounds += 1
        let r = bytes[offset...].withUnsafeBytes { p.parse($0) }
        guard case .complete(let req, let consumed) = r else { break }
        precondition(consumed > 0 && consumed <= bytes.count - offset)
        offset += consumed
        p.reset()
        let chat = try? APIDecoder.decodeGeneration(kind: .chatCompletions, body: req.body, id: 1, sessionHeader: nil, peer: .unknown)
        _ = try? APIDecoder.decodeGeneration(kind: .completions, body: req.body, id: 1, sessionHeader: nil, peer: .unknown)
        // A compiled json_schema is a program the worker accepts, and its binary form round-trips.
        if let schema = chat?.sampling.jsonSchema, !schema.isEmpty {
            let program = try? SchemaProgram(decoding: schema)
            precondition(program?.encoded() == schema, "a compiled schema does not decode")
        }
        _ = try? APIDecoder.decodeDetokenize(req.body)
    }
    // Incremental: the same bytes in two reads must give the same first answer as one read.
    if size > 1 {
        let cut = Int(bytes[0]) % size
        var q = HTTPRequestParser(limits: limits)
        var whole = HTTPRequestParser(limits: limits)
        let first = bytes[..<cut].withUnsafeBytes { q.parse($0) }
        let a: HTTPParseResult
        if case .incomplete = first { a = bytes.withUnsafeBytes { q.parse($0) } } else { a = first }
        let b = bytes.withUnsafeBytes { whole.parse($0) }
        if case .failure = first {} else { precondition(a == b, "split parse differs") }
    }
    // Raw bytes as a JSON body too, through both readers: they must agree (values of the known keys, errors
    // and their offsets, the verdict on a non-object).
    checkKnownFields(bytes)
    return 0
}

private func checkKnownFields(_ bytes: [UInt8]) {
    let keys = APIDecoder.generationKeys
    var tree: JSONValue? = nil
    var treeError: JSONError? = nil
    do { tree = try JSON.parse(bytes) } catch { treeError = error }
    var got = [JSONValue?](repeating: nil, count: keys.names.count)
    do {
        let isObject = try JSON.parseObject(bytes, keys: keys) { k, v in
            precondition(got[k] == nil, "known key visited twice")
            got[k] = v
        }
        precondition(treeError == nil, "parseObject accepted what parse refused: \(treeError!)")
        if case .object = tree! {
            precondition(isObject)
            for (k, name) in keys.names.enumerated() { precondition(got[k] == tree![name], "key \(name) differs") }
        } else {
            precondition(!isObject && got.allSatisfy { $0 == nil })
        }
    } catch {
        precondition(treeError == error, "errors differ: \(error) vs \(String(describing: treeError))")
    }
}
