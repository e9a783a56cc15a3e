import Foundation

/// A sample mean with its confidence interval: `mean ± halfWidth`, Student's t with n − 1 degrees of freedom
/// (`t · s / √n`, s the sample standard deviation). nil half-width with fewer than two values.
public struct MeanInterval: Codable, Equatable, Sendable {
    public let mean: Double
    public let halfWidth: Double?
    public let count: Int
    /// The sample standard deviation (n − 1 in the denominator); nil with fewer than two values.
    public let standardDeviation: Double?

    public var lower: Double? { halfWidth.map { mean - $0 } }
    public var upper: Double? { halfWidth.map { mean + $0 } }

    enum CodingKeys: String, CodingKey {
        case mean, halfWidth = "half_width", count, standardDeviation = "sd"
    }
}

public enum EvalStatistics {
    /// The mean of `values` and its `confidence` interval (0.95 by default). Needs at least one value.
    public static func meanInterval(_ values: [Double], confidence: Double = 0.95) -> MeanInterval {
        precondition(!values.isEmpty, "meanInterval of no values")
        precondition(confidence > 0 && confidence < 1, "confidence must be in (0, 1)")
        let n = Double(values.count)
        let mean = values.reduce(0, +) / n
        guard values.count >= 2 else { return MeanInterval(mean: mean, halfWidth: nil, count: 1, standardDeviation: nil) }
        let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
        let sd = variance.squareRoot()
        let t = studentTQuantile(0.5 + confidence / 2, degreesOfFreedom: n - 1)
        return MeanInterval(mean: mean, halfWidth: t * sd / n.squareRoot(), count: values.count, standardDeviation: sd)
    }

    /// The share of pairs in which `variant` is strictly above `reference` (ties are not wins, so a variant equal to
    /// the reference wins 0). The arrays pair up index by index.
    public static func winRate(_ variant: [Double], over reference: [Double]) -> Double {
        precondition(variant.count == reference.count && !variant.isEmpty, "winRate needs two equal, non-empty lists")
        return Double(zip(variant, reference).filter { $0 > $1 }.count) / Double(variant.count)
    }

    /// The p-quantile of Student's t distribution with `degreesOfFreedom` (> 0), p in (0, 1): the CDF inverted by
    /// bisection to 1e-12.
    public static func studentTQuantile(_ p: Double, degreesOfFreedom nu: Double) -> Double {
        precondition(p > 0 && p < 1 && nu > 0)
        if p == 0.5 { return 0 }
        if p < 0.5 { return -studentTQuantile(1 - p, degreesOfFreedom: nu) }
        var low = 0.0, high = 1.0
        while studentTCDF(high, degreesOfFreedom: nu) < p { high *= 2 }
        for _ in 0..<200 where high - low > 1e-12 * max(1, high) {
            let mid = (low + high) / 2
            if studentTCDF(mid, degreesOfFreedom: nu) < p { low = mid } else { high = mid }
        }
        return (low + high) / 2
    }

    /// P(T ≤ t) for Student's t with `degreesOfFreedom`: 1 − I_x(ν/2, 1/2)/2 for t ≥ 0, x = ν/(ν + t²).
    public static func studentTCDF(_ t: Double, degreesOfFreedom nu: Double) -> Double {
        let tail = 0.5 * regularizedIncompleteBeta(nu / (nu + t * t), a: nu / 2, b: 0.5)
        return t >= 0 ? 1 - tail : tail
    }

    /// I_x(a, b), by its continued fraction (modified Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where
    /// the fraction converges slowly.
    static func regularizedIncompleteBeta(_ x: Double, a: Double, b: Double) -> Double {
        if x <= 0 { return 0 }
        if x >= 1 { return 1 }
        if x > (a + 1) / (a + b + 2) { return 1 - regularizedIncompleteBeta(1 - x, a: b, b: a) }
        let logBeta: Double = lgamma(a) + lgamma(b) - lgamma(a + b)
        let logFront: Double = a * log(x) + b * log(1 - x) - logBeta
        let tiny = 1e-300
        var c = 1.0, d = 1 - (a + b) * x / (a + 1)
        if abs(d) < tiny { d = tiny }
        d = 1 / d
        var f = d
        for m in 1...500 {
            let m = Double(m)
            // Even step, then odd step of the fraction.
            let even: Double = (a + 2 * m - 1) * (a + 2 * m)
            var numerator: Double = m * (b - m) * x / even
            d = 1 + numerator * d; if abs(d) < tiny { d = tiny }
            c = 1 + numerator / c; if abs(c) < tiny { c = tiny }
            d = 1 / d
            f *= c * d
            let odd: Double = (a + 2 * m) * (a + 2 * m + 1)
            numerator = -(a + m) * (a + b + m) * x / odd
            d = 1 + numerator * d; if abs(d) < tiny { d = tiny }
            c = 1 + numerator / c; if abs(c) < tiny { c = tiny }
            d = 1 / d
            let delta = c * d
            f *= delta
            if abs(delta - 1) < 1e-15 { break }
        }
        return exp(logFront) * f / a
    }
}
