import CTorch
import Foundation

/// Process-wide facts and settings of the libtorch runtime.
public enum Torch {
    /// The libtorch version this package is pinned to and was compiled against.
    public static let pinnedVersion = "2.11.0"

    /// TORCH_VERSION from the headers the shim was compiled with.
    public static var compiledVersion: String { String(cString: ct_version()) }

    /// The version of the libtorch that is loaded now, read from its build configuration (`at::show_config()`).
    public static var runtimeVersion: String? {
        guard let config = ct_build_config().map({ String(cString: $0) }),
            let range = config.range(of: "TORCH_VERSION=")
        else { return nil }
        return String(config[range.upperBound...].prefix { $0 != "," && !$0.isWhitespace })
    }

    public static var buildConfiguration: String { ct_build_config().map { String(cString: $0) } ?? "" }

    /// Intra-op threads (`torch.get_num_threads`).
    public static var threadCount: Int {
        get { Int(ct_get_num_threads()) }
        set { checkStatus(ct_set_num_threads(Int32(newValue)), "set_num_threads") }
    }

    /// The folder holding the loaded `libtorch_cpu.so`, read from the process's memory map.
    public static var libraryDirectory: URL? {
        guard let maps = readProcFile("/proc/self/maps"),
            let line = maps.split(separator: "\n").first(where: { $0.hasSuffix("/libtorch_cpu.so") }),
            let slash = line.firstIndex(of: "/")
        else { return nil }
        return URL(fileURLWithPath: String(line[slash...])).deletingLastPathComponent()
    }

    /// Loads `libtorch_cuda.so` from the folder of the loaded libtorch (once). CUDA is never used silently: a
    /// device `.cuda` asked for without it fails with this error's message.
    public static func loadCUDA() throws {
        try CUDALoader.shared.load()
    }

    /// Whether a CUDA device can be used (loads libtorch_cuda.so on first call; false when it is missing).
    public static var isCUDAAvailable: Bool {
        (try? loadCUDA()) != nil && ct_cuda_is_available() == 1
    }

    public static var cudaDeviceCount: Int {
        guard (try? loadCUDA()) != nil else { return 0 }
        return max(Int(ct_cuda_device_count()), 0)
    }

    /// `torch.manual_seed`: seeds the default CPU generator (and every CUDA device's, when CUDA is loaded).
    public static func manualSeed(_ seed: UInt64) {
        checkStatus(ct_manual_seed(seed), "manual_seed")
    }

    /// Waits for the device's queued work (CUDA kernels run asynchronously); nothing to wait for on the CPU. For
    /// timing.
    public static func synchronize(_ device: Device) {
        guard case .cuda(let index) = device else { return }
        checkStatus(ct_cuda_synchronize(Int32(index)), "cuda_synchronize")
    }

    /// The CUDA caching allocator's memory for a device, in bytes: allocated now and at its peak (what
    /// `torch.cuda.memory_allocated` / `max_memory_allocated` report), reserved now and at its peak. Throws for a
    /// device that is not CUDA or where CUDA is not loaded.
    public static func cudaMemory(_ device: Device) throws
        -> (allocated: Int64, peakAllocated: Int64, reserved: Int64, peakReserved: Int64)
    {
        guard case .cuda(let index) = device else {
            throw TorchError(op: "cuda_memory_stats", message: "\(device) is not a CUDA device")
        }
        try device.ensureAvailable()
        var out = [Int64](repeating: 0, count: 4)
        guard ct_cuda_memory_stats(Int32(index), &out) == 0 else { throw TorchError.last("cuda_memory_stats") }
        return (out[0], out[1], out[2], out[3])
    }

    /// TF32 for CUDA matmuls and convolutions (`torch.backends.cuda.matmul.allow_tf32`, cudnn likewise).
    public static func setTF32(_ enabled: Bool) {
        checkStatus(ct_set_tf32(enabled ? 1 : 0), "set_tf32")
    }
}

/// Loads libtorch_cuda.so at most once per process, remembering the outcome.
final class CUDALoader: @unchecked Sendable {
    static let shared = CUDALoader()
    private let lock = NSLock()
    private var outcome: Result<Void, TorchError>?

    func load() throws {
        lock.lock()
        defer { lock.unlock() }
        if outcome == nil { outcome = attempt() }
        try outcome!.get()
    }

    private func attempt() -> Result<Void, TorchError> {
        guard let dir = Torch.libraryDirectory else {
            return .failure(TorchError(op: "cuda", message: "cannot locate the loaded libtorch_cpu.so"))
        }
        let path = dir.appendingPathComponent("libtorch_cuda.so").path
        guard FileManager.default.fileExists(atPath: path) else {
            return .failure(TorchError(op: "cuda", message: """
                CUDA was asked for but \(path) does not exist: this libtorch is CPU-only. Point LIBTORCH (or \
                LIBTORCH_USE_PYTORCH=1) at a CUDA build of torch \(Torch.pinnedVersion) and rebuild
                """))
        }
        if ct_cuda_load(path) != 0 { return .failure(TorchError.last("cuda")) }
        return .success(())
    }
}

extension Device {
    /// Checks that the device can be used, loading CUDA when needed.
    public func ensureAvailable() throws {
        guard case .cuda(let index) = self else { return }
        try Torch.loadCUDA()
        let count = Torch.cudaDeviceCount
        guard index < count else {
            throw TorchError(op: "cuda", message: "device cuda:\(index) was asked for, \(count) CUDA device(s) found")
        }
    }
}

/// Reads a /proc file to its end (they report size 0, so size-based readers return nothing).
public func readProcFile(_ path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}

/// This process's peak resident memory in MiB since it started: VmHWM of /proc/self/status. Not `ru_maxrss`, which
/// Linux carries across exec, so that a child spawned by a big process (a test runner) starts with its parent's peak.
public func peakResidentMemoryMB() -> Double {
    if let status = readProcFile("/proc/self/status"),
       let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
       let kb = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") {
        return kb / 1024
    }
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

/// Hands the pages the C allocator holds free back to the system (glibc's `malloc_trim`), so that freed tensors stop
/// counting in this process's resident memory: before a benchmark starts its reference beside it, for example.
/// (Looked up at run time: Swift's Glibc module does not declare it.)
public func releaseFreedMemory() {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_trim") else { return }
    _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
}
