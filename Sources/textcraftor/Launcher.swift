import Foundation
import TextCraftor
import Torch

/// torchrun's conventions: a process learns its place from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
struct DistributedEnvironment: Equatable {
    var rank: Int
    var worldSize: Int
    var localRank: Int
    var masterAddress: String
    var masterPort: Int
    /// torchrun's agent already hosts the store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True).
    var launcherHostsStore = false

    /// nil when WORLD_SIZE is absent or 1 (a single process); an error naming the variable when one is malformed.
    static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> DistributedEnvironment? {
        guard let worldText = env["WORLD_SIZE"] else { return nil }
        func integer(_ name: String, _ text: String?) throws -> Int {
            guard let text, let value = Int(text) else {
                throw CommandError("\(name)=\(text ?? "") (torchrun convention): expected an integer")
            }
            return value
        }
        let world = try integer("WORLD_SIZE", worldText)
        guard world >= 1 else { throw CommandError("WORLD_SIZE=\(world): expected at least 1") }
        if world == 1 { return nil }
        let rank = try integer("RANK", env["RANK"])
        guard (0..<world).contains(rank) else { throw CommandError("RANK=\(rank) is outside 0..<WORLD_SIZE (\(world))") }
        let port = try integer("MASTER_PORT", env["MASTER_PORT"])
        guard (1...65535).contains(port) else { throw CommandError("MASTER_PORT=\(port): expected a TCP port") }
        return DistributedEnvironment(
            rank: rank, worldSize: world, localRank: try env["LOCAL_RANK"].map { try integer("LOCAL_RANK", $0) } ?? rank,
            masterAddress: env["MASTER_ADDR"] ?? "127.0.0.1", masterPort: port,
            launcherHostsStore: env["TORCHELASTIC_USE_AGENT_STORE"]?.lowercased() == "true")
    }

    /// What `--dist-backend` names.
    enum BackendChoice: String {
        case auto, gloo, nccl

        /// The flag's value, or a one-line error naming it.
        init(flag: String) throws {
            guard let choice = Self(rawValue: flag) else { throw CommandError("--dist-backend \(flag): expected auto, gloo or nccl") }
            self = choice
        }
    }

    /// The backend `choice` gives on `device`: auto is NCCL on CUDA where the plugin is found, else Gloo; nccl needs
    /// a CUDA device and the plugin. Fails in one line naming the flag.
    static func backend(_ choice: BackendChoice, device: Device, plugin: String? = ProcessGroup.ncclPlugin()) throws
        -> ProcessGroup.Backend
    {
        let onCUDA: Bool = if case .cuda = device { true } else { false }
        switch choice {
        case .gloo:
            return .gloo
        case .auto:
            return onCUDA ? plugin.map { .nccl(plugin: $0) } ?? .gloo : .gloo
        case .nccl:
            guard onCUDA else { throw CommandError("--dist-backend nccl needs --device cuda (NCCL runs on GPUs; Gloo serves the CPU)") }
            guard let plugin else {
                throw CommandError("--dist-backend nccl: no NCCL plugin found: build it with scripts/build-nccl-plugin against this CUDA libtorch, or set TEXTCRAFTOR_NCCL_PLUGIN")
            }
            return .nccl(plugin: plugin)
        }
    }

    /// Joins the group (rank 0 hosts the store), or fails in one line naming the address.
    func join(timeout: Double, backend: ProcessGroup.Backend = .gloo) throws -> ProcessGroup {
        guard ProcessGroup.isAvailable else {
            throw CommandError("this textcraftor was built without Gloo (install libgloo-dev and rebuild): no data-parallel training")
        }
        do {
            return try ProcessGroup(host: masterAddress, port: masterPort, rank: rank, worldSize: worldSize, timeout: timeout,
                                    launcherHostsStore: launcherHostsStore, backend: backend)
        } catch {
            let cause = (error as? TorchError)?.message.split(separator: "\n").first.map(String.init) ?? "\(error)"
            throw CommandError("rank \(rank): cannot form the \(backend) group of \(worldSize) at \(masterAddress):\(masterPort) within \(Int(timeout)) s (\(cause))")
        }
    }
}

/// `--nproc-per-node N`: runs this same command as N processes on this machine, rank i with RANK=i, LOCAL_RANK=i,
/// WORLD_SIZE=N, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, and waits. If one fails, the others are given the
/// group's timeout to stop on their own (they do: their next collective fails and names the rank), then killed.
/// Returns the exit status: 0, or the first failure's.
enum Launcher {
    static func run(processes: Int, arguments: [String], port: Int?, timeout: Double) throws -> Int32 {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        guard let port = port ?? ProcessGroup.freePort() else {
            throw CommandError("cannot find a free port on 127.0.0.1: give --master-port")
        }
        var children: [Process] = []
        signal(SIGINT, SIG_IGN)  // Ctrl-C reaches the children through the terminal; they save and stop together
        for rank in 0..<processes {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            var env = ProcessInfo.processInfo.environment
            env["RANK"] = String(rank)
            env["LOCAL_RANK"] = String(rank)
            env["WORLD_SIZE"] = String(processes)
            env["LOCAL_WORLD_SIZE"] = String(processes)
            env["MASTER_ADDR"] = "127.0.0.1"
            env["MASTER_PORT"] = String(port)
            // Each rank gets its share of the cores, as torchrun's OMP_NUM_THREADS default intends.
            if env["OMP_NUM_THREADS"] == nil {
                env["OMP_NUM_THREADS"] = String(max(1, ProcessInfo.processInfo.activeProcessorCount / processes))
            }
            process.environment = env
            try process.run()
            children.append(process)
        }
        var firstFailure: (rank: Int, status: Int32)? = nil
        var deadline: Date? = nil
        while children.contains(where: \.isRunning) {
            for (rank, child) in children.enumerated() where !child.isRunning && child.terminationStatus != 0 && firstFailure == nil {
                firstFailure = (rank, child.terminationStatus)
                deadline = Date().addingTimeInterval(timeout + 10)
            }
            if let deadline, Date() > deadline {
                for child in children where child.isRunning { kill(child.processIdentifier, SIGKILL) }
            }
            usleep(50_000)
        }
        for (rank, child) in children.enumerated() where child.terminationStatus != 0 && firstFailure == nil {
            firstFailure = (rank, child.terminationStatus)
        }
        if let firstFailure {
            FileHandle.standardError.write(Data("launcher: rank \(firstFailure.rank) exited with status \(firstFailure.status)\n".utf8))
            return firstFailure.status
        }
        return 0
    }

    /// The arguments of this run without the launcher's own flags.
    static func childArguments(_ arguments: [String]) -> [String] {
        var out: [String] = []
        var skip = false
        for argument in arguments {
            if skip { skip = false; continue }
            if argument == "--nproc-per-node" || argument == "--master-port" { skip = true; continue }
            if argument.hasPrefix("--nproc-per-node=") || argument.hasPrefix("--master-port=") { continue }
            out.append(argument)
        }
        return out
    }
}
