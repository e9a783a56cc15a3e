import CTorch
import Foundation

/// A group of processes that train together, over PyTorch's own distributed engine (c10d, inside libtorch): a
/// TCPStore hosted by rank 0 for the rendezvous and a Gloo or NCCL process group for the collectives, as
/// `torch.distributed.init_process_group("gloo", init_method="tcp://HOST:PORT")` sets up. Every collective is
/// bounded by `timeout`: a peer that died or hangs makes it throw instead of waiting forever.
public final class ProcessGroup: @unchecked Sendable {
    public let rank: Int
    public let worldSize: Int
    public let timeout: Double
    public let backend: Backend
    let handle: ct_process_group

    /// Which c10d process group runs the collectives.
    public enum Backend: Equatable, Sendable, CustomStringConvertible {
        /// ProcessGroupGloo (libtorch_cpu): CPU tensors.
        case gloo
        /// ProcessGroupNCCL (libtorch_cuda), through the plugin at this path (`scripts/build-nccl-plugin`): CUDA
        /// tensors, each rank on its own GPU. libtorch_cuda must be loaded (a CUDA device in use) first.
        case nccl(plugin: String)

        public var description: String {
            switch self {
            case .gloo: return "gloo"
            case .nccl: return "nccl"
            }
        }

        /// Whether the collectives take tensors on the GPU (else on the CPU).
        public var onCUDA: Bool { self != .gloo }
    }

    /// The NCCL plugin this process can use: `TEXTCRAFTOR_NCCL_PLUGIN` if set (nil when that file does not exist),
    /// else `libtextcraftor_nccl.so` beside the executable or in `.build/nccl/` of the working folder.
    public static func ncclPlugin(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        let name = "libtextcraftor_nccl.so"
        var candidates: [String]
        if let path = environment["TEXTCRAFTOR_NCCL_PLUGIN"] {
            candidates = [path]
        } else {
            let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
            candidates = [executable.deletingLastPathComponent().appendingPathComponent(name).path,
                          FileManager.default.currentDirectoryPath + "/.build/nccl/" + name]
        }
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    public enum ReduceOp: Int32 {
        case sum = 0, max = 1, min = 2
    }

    /// Whether this build can form a group (the shim was compiled with Gloo's headers).
    public static var isAvailable: Bool { ct_dist_available() == 1 }

    /// Joins the group: rank 0 hosts the store on `port` of `host` (MASTER_ADDR, MASTER_PORT) unless
    /// `launcherHostsStore` (torchrun's agent hosts it: TORCHELASTIC_USE_AGENT_STORE); the others connect to it.
    /// Returns when all `worldSize` ranks have joined, or throws after `timeout` seconds.
    public init(host: String, port: Int, rank: Int, worldSize: Int, timeout: Double, launcherHostsStore: Bool = false,
                backend: Backend = .gloo) throws {
        precondition(worldSize >= 1 && (0..<worldSize).contains(rank) && timeout > 0)
        let hosts: Int32 = rank == 0 && !launcherHostsStore ? 1 : 0
        let plugin: String? = if case .nccl(let path) = backend { path } else { nil }
        guard let handle = ct_dist_init(host, Int32(port), Int32(rank), Int32(worldSize), hosts, Int64(timeout * 1000), plugin)
        else {
            throw TorchError.last("distributed.init")
        }
        self.handle = handle
        self.backend = backend
        self.rank = rank
        self.worldSize = worldSize
        self.timeout = timeout
    }

    deinit { ct_dist_free(handle) }

    /// Reduces `tensors` in place across the group (one collective for all of them; CPU tensors for Gloo, CUDA
    /// tensors for NCCL).
    public func allReduce(_ tensors: [Tensor], _ op: ReduceOp = .sum) throws {
        guard !tensors.isEmpty else { return }
        var handles = tensors.map { Optional($0.handle) }
        guard ct_dist_all_reduce(handle, &handles, Int32(handles.count), op.rawValue) == 0 else {
            throw TorchError.last("distributed.all_reduce")
        }
    }

    /// Copies rank `root`'s `tensors` into everyone's, in place.
    public func broadcast(_ tensors: [Tensor], root: Int = 0) throws {
        guard !tensors.isEmpty else { return }
        var handles = tensors.map { Optional($0.handle) }
        guard ct_dist_broadcast(handle, &handles, Int32(handles.count), Int32(root)) == 0 else {
            throw TorchError.last("distributed.broadcast")
        }
    }

    public func barrier() throws {
        guard ct_dist_barrier(handle) == 0 else { throw TorchError.last("distributed.barrier") }
    }

    /// Sets a key of the group's store.
    public func set(_ key: String, _ value: String) throws {
        guard ct_dist_store_set(handle, key, value) == 0 else { throw TorchError.last("distributed.store_set") }
    }

    /// A key's value if the store holds it now (nil if absent); throws when the store cannot be reached.
    public func value(_ key: String) throws -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        let length = ct_dist_store_get(handle, key, &buffer, Int32(buffer.count))
        guard length >= 0 else { throw TorchError.last("distributed.store_get") }
        return length == 0 ? nil : String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension ProcessGroup {
    /// A TCP port on 127.0.0.1 that nothing listens on now (bound to port 0, read back, closed), or nil when no
    /// socket can be bound. For a rendezvous whose port nobody chose (`--nproc-per-node`, tests).
    public static func freePort() -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        return bound ? Int(UInt16(bigEndian: address.sin_port)) : nil
    }
}
