import Foundation

/// One JSON line of `textcraftor score --json`: the image, each reward's score and the weighted total, keys sorted.
/// JSON has no inf or nan, so such a score (a reward model gone to nan, an overflow) is written as null: the other
/// rows and rewards still come out, and nothing crashes on a number JSONSerialization refuses.
public func scoreJSONLine(image: String, names: [String], scores: [Double], total: Double) throws -> String {
    func number(_ value: Double) -> Any { value.isFinite ? value : NSNull() }
    var object: [String: Any] = ["image": image, "total": number(total)]
    for (name, score) in zip(names, scores) { object[name] = number(score) }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}
