import Foundation
import Torch

/// torchrun's conventions: a process learns its place from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
public struct DistributedEnvironment: Equatable, Sendable {
    public var rank: Int
    public var worldSize: Int
    public var localRank: Int
    public var masterAddress: String
    public var masterPort: Int
    /// torchrun's agent already hosts the store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True).
    public var launcherHostsStore = false

    public init(rank: Int, worldSize: Int, localRank: Int, masterAddress: String, masterPort: Int, launcherHostsStore: Bool = false) {
        self.rank = rank
        self.worldSize = worldSize
        self.localRank = localRank
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.launcherHostsStore = launcherHostsStore
    }

    /// nil when WORLD_SIZE is absent or 1 (a single process); an error naming the variable when one is malformed.
    public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> DistributedEnvironment? {
        guard let worldText = env["WORLD_SIZE"] else { return nil }
        func integer(_ name: String, _ text: String?) throws -> Int {
            guard let text, let value = Int(text) else {
                throw TextCraftorError.invalidArgument("\(name)=\(text ?? "") (torchrun convention): expected an integer")
            }
            return value
        }
        let world = try integer("WORLD_SIZE", worldText)
        guard world >= 1 else { throw TextCraftorError.invalidArgument("WORLD_SIZE=\(world): expected at least 1") }
        if world == 1 { return nil }
        let rank = try integer("RANK", env["RANK"])
        guard (0..<world).contains(rank) else { throw TextCraftorError.invalidArgument("RANK=\(rank) is outside 0..<WORLD_SIZE (\(world))") }
        let port = try integer("MASTER_PORT", env["MASTER_PORT"])
        guard (1...65535).contains(port) else { throw TextCraftorError.invalidArgument("MASTER_PORT=\(port): expected a TCP port") }
        return DistributedEnvironment(
            rank: rank, worldSize: world, localRank: try env["LOCAL_RANK"].map { try integer("LOCAL_RANK", $0) } ?? rank,
            masterAddress: env["MASTER_ADDR"] ?? "127.0.0.1", masterPort: port,
            launcherHostsStore: env["TORCHELASTIC_USE_AGENT_STORE"]?.lowercased() == "true")
    }

    /// The backend `choice` gives on `device`: auto is NCCL on CUDA where the plugin is found, else Gloo; nccl needs
    /// a CUDA device and the plugin. Fails in one line naming the flag.
    public static func backend(_ choice: DistributedBackend, device: Device, plugin: String? = ProcessGroup.ncclPlugin()) throws
        -> ProcessGroup.Backend
    {
        let onCUDA: Bool = if case .cuda = device { true } else { false }
        switch choice {
        case .gloo:
            return .gloo
        case .auto:
            return onCUDA ? plugin.map { .nccl(plugin: $0) } ?? .gloo : .gloo
        case .nccl:
            guard onCUDA else { throw TextCraftorError.invalidSetting(key: "dist_backend", message: "nccl needs a CUDA device (NCCL runs on GPUs; Gloo serves the CPU)") }
            guard let plugin else {
                throw TextCraftorError.invalidSetting(key: "dist_backend", message: "nccl: no NCCL plugin found: build it with scripts/build-nccl-plugin against this CUDA libtorch, or set TEXTCRAFTOR_NCCL_PLUGIN")
            }
            return .nccl(plugin: plugin)
        }
    }

    /// Joins the group (rank 0 hosts the store), or fails in one line naming the address.
    public func join(timeout: Double, backend: ProcessGroup.Backend = .gloo) throws -> ProcessGroup {
        guard ProcessGroup.isAvailable else {
            throw TextCraftorError.invalidArgument("this textcraftor was built without Gloo (install libgloo-dev and rebuild): no data-parallel training")
        }
        do {
            return try ProcessGroup(host: masterAddress, port: masterPort, rank: rank, worldSize: worldSize, timeout: timeout,
                                    launcherHostsStore: launcherHostsStore, backend: backend)
        } catch {
            let cause = (error as? TorchError)?.message.split(separator: "\n").first.map(String.init) ?? "\(error)"
            throw TextCraftorError.invalidArgument("rank \(rank): cannot form the \(backend) group of \(worldSize) at \(masterAddress):\(masterPort) within \(Int(timeout)) s (\(cause))")
        }
    }
}

