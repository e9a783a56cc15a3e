import Foundation

/// A value decoded from the pickle stream of a `torch.save` archive: plain Python data plus tensors.
///
/// Dicts keep their insertion order (state dicts are `OrderedDict`s, and their order is the module's parameter
/// order). Attributes set on a dict (a state dict's `_metadata`) are dropped.
public enum PickleValue: Sendable, Equatable {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PickleValue])
    case list([PickleValue])
    case dict([(key: PickleValue, value: PickleValue)])
    case tensor(TensorData)

    /// The value stored under the string `key`, when this is a dict that has one.
    public subscript(key: String) -> PickleValue? {
        guard case .dict(let entries) = self else { return nil }
        return entries.last { $0.key == .string(key) }?.value
    }

    public var tensor: TensorData? {
        if case .tensor(let tensor) = self { tensor } else { nil }
    }

    /// The Python-ish name of the value's kind, for messages.
    public var kindName: String {
        switch self {
        case .none: "None"
        case .bool: "bool"
        case .int: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .tensor: "tensor"
        }
    }

    public static func == (lhs: PickleValue, rhs: PickleValue) -> Bool {
        switch (lhs, rhs) {
        case (.none, .none): true
        case (.bool(let a), .bool(let b)): a == b
        case (.int(let a), .int(let b)): a == b
        case (.float(let a), .float(let b)): a == b
        case (.string(let a), .string(let b)): a == b
        case (.bytes(let a), .bytes(let b)): a == b
        case (.tuple(let a), .tuple(let b)), (.list(let a), .list(let b)): a == b
        case (.dict(let a), .dict(let b)):
            a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case (.tensor(let a), .tensor(let b)): a == b
        default: false
        }
    }
}

/// The only Python globals a checkpoint may name. Pickle normally imports and calls whatever a stream names (which
/// is how a malicious checkpoint runs code); here a name is either one of these cases, each implemented in Swift
/// below, or an error. Nothing is looked up dynamically.
enum TorchGlobal: Equatable {
    case orderedDict
    case rebuildTensor
    case rebuildParameter
    case size
    case storageClass(DType)

    init?(module: String, name: String) {
        switch (module, name) {
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensor
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch", "Size"): self = .size
        case ("torch", let storage):
            guard let dtype = Self.storageClasses[storage] else { return nil }
            self = .storageClass(dtype)
        default: return nil
        }
    }

    /// The legacy typed-storage classes `torch.save` still names in persistent ids.
    private static let storageClasses: [String: DType] = [
        "FloatStorage": .float32, "HalfStorage": .float16, "BFloat16Storage": .bfloat16, "DoubleStorage": .float64,
        "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16, "CharStorage": .int8,
        "ByteStorage": .uint8, "BoolStorage": .bool,
    ]
}

/// One storage of the archive: untyped bytes that tensors view with an offset, size and stride.
struct TorchStorage {
    let key: String
    let dtype: DType
    let bytes: ByteStorage
}

/// A pickle virtual machine restricted to what `torch.save` emits (protocols 2 to 5, no extension registry, no
/// arbitrary classes). It builds values; it never imports or calls anything (see `TorchGlobal`).
struct PickleMachine {
    /// Loads `data/<key>` for a persistent id `('storage', storage_class, key, location, numel)`.
    typealias StorageLoader = (_ key: String, _ dtype: DType, _ elementCount: Int) throws -> ByteStorage

    /// Values on the stack and in the memo. Lists and dicts are boxes because pickle mutates them after they are
    /// memoized (EMPTY_DICT, BINPUT, ..., SETITEMS), and every reference must see the mutation.
    ///
    /// Every container knows its height (0 when it holds no container, else one more than its tallest child), checked
    /// against `maximumDepth` as each child goes in, so a structure too deep is refused while it is being built: it
    /// never exists, to be freed recursively (which a 100,000-deep one did until the stack ran out). The heights stay
    /// exact because a container that has been put inside another can no longer change (`Nesting.isContained`).
    private enum Item {
        case value(PickleValue)
        case tuple([Item], height: Int)
        case list(ListBox)
        case dict(DictBox)
        case global(TorchGlobal)
        case storage(TorchStorage)

        var height: Int {
            switch self {
            case .tuple(_, let height): height
            case .list(let box): box.nesting.height
            case .dict(let box): box.nesting.height
            case .value, .global, .storage: 0
            }
        }
    }

    private struct Nesting {
        var height = 0
        /// Set once the container is the child of another: from then on adding to it would change the heights of
        /// containers it cannot name, so it is refused. `torch.save` fills every list and dict before it puts it
        /// anywhere; only cyclic structures, or one built from the outside in, add to a contained one.
        var isContained = false
    }

    private final class ListBox {
        var items: [Item] = []
        var nesting = Nesting()
    }

    private final class DictBox {
        var keys: [Item] = []
        var values: [Item] = []
        var nesting = Nesting()
        /// Positions of string and int keys, so that re-assigning a key replaces its value (as in Python) without a
        /// linear scan per item of a large state dict. Other keys (tuples, ...) are simply appended.
        var positions: [IndexKey: Int] = [:]

        enum IndexKey: Hashable {
            case string(String)
            case int(Int)
        }

        func set(_ key: Item, _ value: Item) {
            if let indexKey = Self.indexKey(key) {
                if let position = positions[indexKey] {
                    values[position] = value
                    return
                }
                positions[indexKey] = keys.count
            }
            keys.append(key)
            values.append(value)
        }

        private static func indexKey(_ key: Item) -> IndexKey? {
            switch key {
            case .value(.string(let string)): .string(string)
            case .value(.int(let int)): .int(int)
            default: nil
            }
        }
    }

    private let bytes: [UInt8]
    private let path: String
    private let loadStorage: StorageLoader
    private var position = 0
    private var stack: [Item] = []
    private var marks: [Int] = []
    private var memo: [Int: Item] = [:]
    private var storages: [String: TorchStorage] = [:]

    /// How deeply values may nest; also what stops a cyclic structure (a list appended to itself) from recursing
    /// forever when it is converted to `PickleValue`.
    private static let maximumDepth = 256

    init(bytes: [UInt8], path: String, loadStorage: @escaping StorageLoader) {
        self.bytes = bytes
        self.path = path
        self.loadStorage = loadStorage
    }

    /// Runs the stream to its STOP opcode and returns the value it built.
    mutating func run() throws -> PickleValue {
        while true {
            let offset = position
            let opcode = try readByte()
            if opcode == Opcode.stop {
                let result = try pop()
                return try convert(result)
            }
            try execute(opcode, at: offset)
        }
    }

    private enum Opcode {
        static let proto: UInt8 = 0x80, frame: UInt8 = 0x95, stop = UInt8(ascii: "."), mark = UInt8(ascii: "(")
        static let pop = UInt8(ascii: "0"), popMark = UInt8(ascii: "1"), dup = UInt8(ascii: "2")
        static let none = UInt8(ascii: "N"), newTrue: UInt8 = 0x88, newFalse: UInt8 = 0x89
        static let binInt = UInt8(ascii: "J"), binInt1 = UInt8(ascii: "K"), binInt2 = UInt8(ascii: "M")
        static let long1: UInt8 = 0x8A, binFloat = UInt8(ascii: "G")
        static let binUnicode = UInt8(ascii: "X"), shortBinUnicode: UInt8 = 0x8C, binUnicode8: UInt8 = 0x8D
        static let binBytes = UInt8(ascii: "B"), shortBinBytes = UInt8(ascii: "C")
        static let emptyTuple = UInt8(ascii: ")"), tuple = UInt8(ascii: "t")
        static let tuple1: UInt8 = 0x85, tuple2: UInt8 = 0x86, tuple3: UInt8 = 0x87
        static let emptyList = UInt8(ascii: "]"), list = UInt8(ascii: "l"), append = UInt8(ascii: "a")
        static let appends = UInt8(ascii: "e")
        static let emptyDict = UInt8(ascii: "}"), dict = UInt8(ascii: "d"), setItem = UInt8(ascii: "s")
        static let setItems = UInt8(ascii: "u")
        static let binPut = UInt8(ascii: "q"), longBinPut = UInt8(ascii: "r"), memoize: UInt8 = 0x94
        static let binGet = UInt8(ascii: "h"), longBinGet = UInt8(ascii: "j")
        static let global = UInt8(ascii: "c"), stackGlobal: UInt8 = 0x93
        static let reduce = UInt8(ascii: "R"), build = UInt8(ascii: "b"), newObj: UInt8 = 0x81
        static let binPersId = UInt8(ascii: "Q")
    }

    private mutating func execute(_ opcode: UInt8, at offset: Int) throws {
        switch opcode {
        case Opcode.proto:
            let version = try readByte()
            guard version <= 5 else { throw fail("pickle protocol \(version) is newer than 5") }
        case Opcode.frame:
            _ = try read(8)  // Framing only batches reads; the frame's contents follow inline.
        case Opcode.mark:
            marks.append(stack.count)
        case Opcode.pop:
            _ = try pop()
        case Opcode.popMark:
            _ = try popToMark()
        case Opcode.dup:
            stack.append(try top())

        case Opcode.none: push(.none)
        case Opcode.newTrue: push(.bool(true))
        case Opcode.newFalse: push(.bool(false))
        case Opcode.binInt: push(.int(Int(Int32(bitPattern: UInt32(try readLittleEndian(4))))))
        case Opcode.binInt1: push(.int(Int(try readByte())))
        case Opcode.binInt2: push(.int(Int(try readLittleEndian(2))))
        case Opcode.long1: push(.int(try readLong(byteCount: Int(try readByte()))))
        case Opcode.binFloat:
            // The one big-endian field of the format.
            let bits = try read(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            push(.float(Double(bitPattern: bits)))
        case Opcode.shortBinUnicode: push(.string(try readString(length: Int(try readByte()))))
        case Opcode.binUnicode: push(.string(try readString(length: Int(try readLittleEndian(4)))))
        case Opcode.binUnicode8: push(.string(try readString(length: try readLength8())))
        case Opcode.shortBinBytes: push(.bytes(Array(try read(Int(try readByte())))))
        case Opcode.binBytes: push(.bytes(Array(try read(Int(try readLittleEndian(4))))))

        case Opcode.emptyTuple: stack.append(.tuple([], height: 0))
        case Opcode.tuple: stack.append(try tuple(try popToMark()))
        case Opcode.tuple1, Opcode.tuple2, Opcode.tuple3:
            let count = Int(opcode - Opcode.tuple1) + 1
            guard stack.count >= count + (marks.last ?? 0) else { throw fail("TUPLE\(count) on a short stack") }
            let items = Array(stack.suffix(count))
            stack.removeLast(count)
            stack.append(try tuple(items))
        case Opcode.emptyList: stack.append(.list(ListBox()))
        case Opcode.list:
            let box = ListBox()
            try append(try popToMark(), to: box)
            stack.append(.list(box))
        case Opcode.append:
            let item = try pop()
            try append([item], to: try listOnTop())
        case Opcode.appends:
            let items = try popToMark()
            try append(items, to: try listOnTop())
        case Opcode.emptyDict: stack.append(.dict(DictBox()))
        case Opcode.dict:
            let box = DictBox()
            try setItems(try popToMark(), in: box)
            stack.append(.dict(box))
        case Opcode.setItem:
            let value = try pop()
            let key = try pop()
            try dictOnTop().set(key, value)
        case Opcode.setItems:
            let items = try popToMark()
            try setItems(items, in: try dictOnTop())

        case Opcode.binPut: memo[Int(try readByte())] = try top()
        case Opcode.longBinPut: memo[Int(try readLittleEndian(4))] = try top()
        case Opcode.memoize: memo[memo.count] = try top()
        case Opcode.binGet: stack.append(try memoized(Int(try readByte())))
        case Opcode.longBinGet: stack.append(try memoized(Int(try readLittleEndian(4))))

        case Opcode.global:
            let module = try readLine()
            let name = try readLine()
            stack.append(.global(try resolve(module: module, name: name)))
        case Opcode.stackGlobal:
            let name = try pop()
            let module = try pop()
            guard case .value(.string(let nameString)) = name, case .value(.string(let moduleString)) = module else {
                throw fail("STACK_GLOBAL needs two strings")
            }
            stack.append(.global(try resolve(module: moduleString, name: nameString)))
        case Opcode.reduce:
            let arguments = try pop()
            let callable = try pop()
            guard case .tuple(let argumentList, _) = arguments else { throw fail("REDUCE arguments are not a tuple") }
            stack.append(try call(callable, argumentList))
        case Opcode.newObj:
            let arguments = try pop()
            let type = try pop()
            guard case .global(.orderedDict) = type, case .tuple(let argumentList, _) = arguments, argumentList.isEmpty
            else {
                throw fail("NEWOBJ is only supported for OrderedDict()")
            }
            stack.append(.dict(DictBox()))
        case Opcode.build:
            _ = try pop()  // The state: a dict's attributes (`_metadata`), which nothing here needs.
            guard case .dict = try top() else { throw fail("BUILD is only supported on a dict") }
        case Opcode.binPersId:
            stack.append(.storage(try persistentLoad(try pop())))

        default:
            throw SerializationError.unsupportedPickleOpcode(path: path, opcode: opcode, offset: offset)
        }
    }

    // MARK: Globals and calls

    private func resolve(module: String, name: String) throws -> TorchGlobal {
        guard let global = TorchGlobal(module: module, name: name) else {
            throw SerializationError.disallowedGlobal(path: path, name: "\(module).\(name)")
        }
        return global
    }

    private func call(_ callable: Item, _ arguments: [Item]) throws -> Item {
        guard case .global(let global) = callable else { throw fail("REDUCE on something that is not a global") }
        switch global {
        case .orderedDict:
            guard arguments.isEmpty else { throw fail("OrderedDict is only supported without arguments") }
            return .dict(DictBox())
        case .rebuildTensor:
            return .value(.tensor(try rebuildTensor(arguments)))
        case .rebuildParameter:
            // _rebuild_parameter(data, requires_grad, backward_hooks): the data is all a weight file needs.
            guard arguments.count == 3, case .value(.tensor(let tensor)) = arguments[0] else {
                throw fail("_rebuild_parameter expects (tensor, requires_grad, backward_hooks)")
            }
            return .value(.tensor(tensor))
        case .size:
            guard arguments.count == 1, case .tuple = arguments[0] else { throw fail("torch.Size expects one tuple") }
            return arguments[0]
        case .storageClass(let dtype):
            throw fail("constructing a \(dtype) storage directly is not supported")
        }
    }

    /// `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
    /// [, metadata])`: a view of a storage. Contiguous views stay views; others are copied into row-major order.
    private func rebuildTensor(_ arguments: [Item]) throws -> TensorData {
        guard arguments.count == 6 || arguments.count == 7, case .storage(let storage) = arguments[0],
            case .value(.int(let offset)) = arguments[1], let size = integers(arguments[2]),
            let stride = integers(arguments[3])
        else {
            throw fail("_rebuild_tensor_v2 expects (storage, offset, size, stride, requires_grad, hooks[, metadata])")
        }
        let view = StridedView(offset: offset, size: size, stride: stride)
        let elementCapacity = storage.bytes.count / storage.dtype.itemSize
        guard let bytes = view.bytes(of: storage.bytes, itemSize: storage.dtype.itemSize, capacity: elementCapacity)
        else {
            throw fail(
                "tensor view (offset \(offset), size \(excerpt(shape: size)), stride \(excerpt(shape: stride))) "
                    + "does not fit storage '\(excerpt(storage.key))' "
                    + "of \(elementCapacity) elements")
        }
        return TensorData(dtype: storage.dtype, shape: size, storage: bytes)
    }

    /// A persistent id `('storage', storage_class, key, location, numel)`, resolved to the archive's record.
    private mutating func persistentLoad(_ id: Item) throws -> TorchStorage {
        guard case .tuple(let fields, _) = id, fields.count == 5, case .value(.string("storage")) = fields[0],
            case .global(.storageClass(let dtype)) = fields[1], case .value(.string(let key)) = fields[2],
            case .value(.int(let elementCount)) = fields[4]
        else {
            throw fail("unsupported persistent id (expected ('storage', class, key, location, numel))")
        }
        if let storage = storages[key] { return storage }
        let storage = TorchStorage(key: key, dtype: dtype, bytes: try loadStorage(key, dtype, elementCount))
        storages[key] = storage
        return storage
    }

    // MARK: Stack

    private mutating func push(_ value: PickleValue) { stack.append(.value(value)) }

    private mutating func pop() throws -> Item {
        guard stack.count > (marks.last ?? 0), let item = stack.popLast() else { throw fail("stack underflow") }
        return item
    }

    private func top() throws -> Item {
        guard stack.count > (marks.last ?? 0), let item = stack.last else { throw fail("stack underflow") }
        return item
    }

    private mutating func popToMark() throws -> [Item] {
        guard let mark = marks.popLast() else { throw fail("no MARK to pop to") }
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    private func listOnTop() throws -> ListBox {
        guard case .list(let box) = try top() else { throw fail("APPEND to something that is not a list") }
        return box
    }

    private func dictOnTop() throws -> DictBox {
        guard case .dict(let box) = try top() else { throw fail("SETITEM on something that is not a dict") }
        return box
    }

    private func setItems(_ items: [Item], in box: DictBox) throws {
        guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
        box.nesting.height = try height(adding: items, to: box.nesting)
        Self.markContained(items)
        for index in stride(from: 0, to: items.count, by: 2) {
            box.set(items[index], items[index + 1])
        }
    }

    private func append(_ items: [Item], to box: ListBox) throws {
        box.nesting.height = try height(adding: items, to: box.nesting)
        Self.markContained(items)
        box.items.append(contentsOf: items)
    }

    private func tuple(_ items: [Item]) throws -> Item {
        let height = try height(adding: items, to: Nesting())
        Self.markContained(items)
        return .tuple(items, height: height)
    }

    /// The height of a container once `children` are in it, or an error when that would nest values `maximumDepth`
    /// deep or the container is already inside another.
    private func height(adding children: [Item], to nesting: Nesting) throws -> Int {
        guard !nesting.isContained else {
            throw fail("data.pkl adds to a list or dict after putting it inside another value (a cyclic structure)")
        }
        guard let tallest = children.lazy.map(\.height).max() else { return nesting.height }
        let height = max(nesting.height, tallest + 1)
        guard height < Self.maximumDepth else {
            throw fail("data.pkl nests values more than \(Self.maximumDepth) deep")
        }
        return height
    }

    private static func markContained(_ children: [Item]) {
        for child in children {
            switch child {
            case .list(let box): box.nesting.isContained = true
            case .dict(let box): box.nesting.isContained = true
            case .value, .tuple, .global, .storage: break
            }
        }
    }

    private func memoized(_ index: Int) throws -> Item {
        guard let item = memo[index] else { throw fail("memo slot \(index) is empty") }
        return item
    }

    // MARK: Reading the stream

    private mutating func read(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, count <= bytes.count - position else { throw fail("data.pkl ends unexpectedly") }
        defer { position += count }
        return bytes[position..<(position + count)]
    }

    private mutating func readByte() throws -> UInt8 { try read(1).first ?? 0 }

    private mutating func readLittleEndian(_ count: Int) throws -> UInt64 {
        try read(count).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    private mutating func readLength8() throws -> Int {
        let length = try readLittleEndian(8)
        guard length <= UInt64(bytes.count) else { throw fail("data.pkl ends unexpectedly") }
        return Int(length)
    }

    /// LONG1: a little-endian two's-complement integer of up to 8 bytes (more would not fit an `Int`).
    private mutating func readLong(byteCount: Int) throws -> Int {
        guard byteCount <= 8 else { throw fail("integer of \(byteCount) bytes does not fit 64 bits") }
        guard byteCount > 0 else { return 0 }
        let raw = try readLittleEndian(byteCount)
        let unusedBits = UInt64(64 - 8 * byteCount)
        return Int(Int64(bitPattern: raw << unusedBits) >> unusedBits)  // sign-extends
    }

    private mutating func readString(length: Int) throws -> String {
        let raw = try read(length)
        // Foundation's initializer rather than String(validating:), which needs macOS 15 (the package supports 14).
        guard let string = String(bytes: raw, encoding: .utf8) else { throw fail("string is not valid UTF-8") }
        return string
    }

    /// A newline-terminated line (the module and name of GLOBAL).
    private mutating func readLine() throws -> String {
        guard let end = bytes[position...].firstIndex(of: UInt8(ascii: "\n")) else {
            throw fail("data.pkl ends unexpectedly")
        }
        let line = String(decoding: bytes[position..<end], as: UTF8.self)
        position = end + 1
        return line
    }

    // MARK: Results

    private func integers(_ item: Item) -> [Int]? {
        guard case .tuple(let items, _) = item else { return nil }
        var result: [Int] = []
        for item in items {
            guard case .value(.int(let value)) = item else { return nil }
            result.append(value)
        }
        return result
    }

    /// Turns the machine's boxes into values. A stream can refer to one memoized container many times (a list
    /// holding the same list twice, nested 40 deep, expands to 2^40 values), so the expansion has a budget as well as
    /// the depth limit.
    private func convert(_ item: Item) throws -> PickleValue {
        var budget = max(1_000_000, 16 * bytes.count)
        return try convert(item, depth: 0, budget: &budget)
    }

    private func convert(_ item: Item, depth: Int, budget: inout Int) throws -> PickleValue {
        guard depth < Self.maximumDepth else {
            throw fail("data.pkl nests values more than \(Self.maximumDepth) deep (or is cyclic)")
        }
        budget -= 1
        guard budget >= 0 else { throw fail("data.pkl expands to too many values (containers shared many times)") }
        switch item {
        case .value(let value):
            return value
        case .tuple(let items, _):
            return .tuple(try items.map { try convert($0, depth: depth + 1, budget: &budget) })
        case .list(let box):
            return .list(try box.items.map { try convert($0, depth: depth + 1, budget: &budget) })
        case .dict(let box):
            return .dict(
                try zip(box.keys, box.values).map {
                    (
                        key: try convert($0, depth: depth + 1, budget: &budget),
                        value: try convert($1, depth: depth + 1, budget: &budget)
                    )
                })
        case .global:
            throw fail("data.pkl returns a bare class or function, which has no value")
        case .storage:
            throw fail("data.pkl returns a bare storage; only tensors are supported")
        }
    }

    private func fail(_ reason: String) -> SerializationError {
        .invalidCheckpoint(path: path, reason: reason)
    }
}

/// A tensor as a view of a storage: element offset, size and stride, as `torch.Tensor.as_strided` takes them.
struct StridedView {
    let offset: Int
    let size: [Int]
    let stride: [Int]

    /// The view's elements as contiguous row-major bytes: a slice of `storage` when the view is contiguous, a
    /// strided copy otherwise. Nil when the view is malformed or reaches outside `capacity` elements.
    func bytes(of storage: ByteStorage, itemSize: Int, capacity: Int) -> ByteStorage? {
        guard size.count == stride.count, offset >= 0, stride.allSatisfy({ $0 >= 0 }),
            let count = checkedElementCount(size)
        else { return nil }
        guard count > 0 else { return .owned(Data()) }

        // The farthest element the view touches; every step is overflow-checked because the numbers are untrusted.
        var last = offset
        for (dimension, step) in zip(size, stride) {
            let (reach, overflow1) = (dimension - 1).multipliedReportingOverflow(by: step)
            let (sum, overflow2) = last.addingReportingOverflow(reach)
            guard !overflow1, !overflow2 else { return nil }
            last = sum
        }
        guard last < capacity else { return nil }

        if isContiguous {
            return storage.slice((offset * itemSize)..<((offset + count) * itemSize))
        }
        var output = Data(count: count * itemSize)
        output.withUnsafeMutableBytes { destination in
            storage.withUnsafeBytes { source in
                copyStrided(from: source, to: destination, count: count, itemSize: itemSize)
            }
        }
        return .owned(output)
    }

    /// Row-major contiguity; dimensions of size 1 may have any stride (PyTorch does not normalise them).
    private var isContiguous: Bool {
        var expected = 1
        for (dimension, step) in zip(size, stride).reversed() where dimension != 1 {
            guard step == expected else { return false }
            expected *= dimension
        }
        return true
    }

    /// Walks the view's indices in row-major order like an odometer, copying one element at a time.
    private func copyStrided(
        from source: UnsafeRawBufferPointer, to destination: UnsafeMutableRawBufferPointer, count: Int, itemSize: Int
    ) {
        guard let sourceBase = source.baseAddress, let destinationBase = destination.baseAddress else { return }
        var index = [Int](repeating: 0, count: size.count)
        var element = offset
        for position in 0..<count {
            (destinationBase + position * itemSize).copyMemory(
                from: sourceBase + element * itemSize, byteCount: itemSize)
            var dimension = size.count - 1
            while dimension >= 0 {
                index[dimension] += 1
                element += stride[dimension]
                if index[dimension] < size[dimension] { break }
                element -= stride[dimension] * size[dimension]
                index[dimension] = 0
                dimension -= 1
            }
        }
    }
}
