import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A whole file mapped read-only into memory. Tensors read from it are views of the mapping, so a multi-gigabyte
/// checkpoint costs page cache, not heap; the mapping lives as long as any `TensorData` that refers to it.
///
/// `@unchecked Sendable`: the mapping is `PROT_READ` and the pointer is never changed after `init`, so sharing it
/// between threads is safe. (Like any mmap, it assumes nobody truncates the file while it is mapped.)
final class MappedFile: @unchecked Sendable {
    let path: String
    /// The file's bytes; empty (and with a nil base address) for an empty file, which cannot be mapped.
    let bytes: UnsafeRawBufferPointer

    init(path: String) throws {
        self.path = path
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw SerializationError.io(path: path, reason: lastErrorMessage()) }
        defer { close(descriptor) }

        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw SerializationError.io(path: path, reason: lastErrorMessage())
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw SerializationError.io(path: path, reason: "not a regular file")
        }
        let size = Int(status.st_size)
        guard size > 0 else {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        // MAP_PRIVATE + PROT_READ: we never write, and a private mapping cannot leak writes back even by mistake.
        let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0)
        guard let address, address != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SerializationError.io(path: path, reason: "mmap failed: \(lastErrorMessage())")
        }
        bytes = UnsafeRawBufferPointer(start: address, count: size)
    }

    deinit {
        if let base = bytes.baseAddress {
            munmap(UnsafeMutableRawPointer(mutating: base), bytes.count)
        }
    }

    var count: Int { bytes.count }
}

/// `strerror(errno)` as a Swift string, for `SerializationError.io` messages.
func lastErrorMessage() -> String {
    String(cString: strerror(errno))
}
