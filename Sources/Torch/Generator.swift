import CTorch

/// A random-number generator (`torch.Generator`). Its state can be saved and restored, for exact resume.
public final class Generator: @unchecked Sendable {
    let handle: ct_generator
    /// The device whose random numbers it makes (`torch.Generator.device`).
    public let device: Device

    /// A new generator seeded with `seed` (`torch.Generator(device).manual_seed(seed)`).
    public init(seed: UInt64, device: Device = .cpu) {
        guard let h = ct_generator_new(seed, device.typeCode, device.index) else { trap("Generator", message: TorchError.last("Generator").message) }
        handle = h
        self.device = device
    }

    private init(handle: ct_generator, device: Device) {
        self.handle = handle
        self.device = device
    }

    /// The process-wide default generator of a device, the one `Torch.manualSeed` seeds.
    public static func defaultGenerator(_ device: Device = .cpu) -> Generator {
        guard let h = ct_generator_default(device.typeCode, device.index) else {
            trap("default_generator", message: TorchError.last("default_generator").message)
        }
        return Generator(handle: h, device: device)
    }

    deinit { ct_generator_free(handle) }

    public var seed: UInt64 {
        get { ct_generator_seed(handle) }
        set { checkStatus(ct_generator_set_seed(handle, newValue), "manual_seed") }
    }

    /// The full state as a uint8 tensor (`Generator.get_state()`).
    public var state: Tensor {
        get { Tensor(handle: check(ct_generator_get_state(handle), "get_state")) }
        set { checkStatus(ct_generator_set_state(handle, newValue.handle), "set_state") }
    }

    /// Restores a state saved with `state`, failing with libtorch's message when it does not fit this generator.
    public func restore(state: Tensor) throws {
        guard ct_generator_set_state(handle, state.handle) == 0 else { throw TorchError.last("set_state") }
    }
}
