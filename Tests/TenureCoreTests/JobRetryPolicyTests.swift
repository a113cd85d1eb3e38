import Testing
@testable import TenureCore

/// The retry rule of durable jobs: every way an attempt can end, at the first, a middle and
/// the last attempt, with and without a cancel asked for.
@Suite struct JobRetryPolicyTests {
    static let policy = JobRetryPolicy(maxAttempts: 3, baseDelay: .seconds(10), maxDelay: .seconds(300))

    /// (attempt, end, cancel requested) → decision.
    static let table: [(Int, JobAttemptEnd, Bool, JobDecision)] = [
        (1, .succeeded, false, .finish(.succeeded)),
        (3, .succeeded, true, .finish(.succeeded)),
        (1, .cancelled, false, .finish(.cancelled)),
        (1, .failed(retryable: true), false, .retry(delay: .seconds(10))),
        (2, .failed(retryable: true), false, .retry(delay: .seconds(20))),
        (3, .failed(retryable: true), false, .finish(.failed)),
        (1, .failed(retryable: false), false, .finish(.failed)),
        (1, .failed(retryable: true), true, .finish(.cancelled)),
        (1, .leaseExpired, false, .retry(delay: .zero)),
        (2, .leaseExpired, false, .retry(delay: .zero)),
        (3, .leaseExpired, false, .finish(.failed)),
        (1, .leaseExpired, true, .finish(.cancelled)),
        (3, .released, false, .retry(delay: .zero)),
        (1, .released, true, .finish(.cancelled)),
    ]

    @Test func everyEnding() {
        for (attempt, end, cancel, expected) in Self.table {
            #expect(Self.policy.decide(attempt: attempt, end: end, cancelRequested: cancel) == expected, "\(attempt) \(end) cancel=\(cancel)")
        }
    }

    @Test func backoffDoublesUpToTheCap() {
        #expect((1...8).map { Self.policy.backoff(after: $0) } == [10, 20, 40, 80, 160, 300, 300, 300].map { Duration.seconds($0) })
    }

    @Test func onlyTransientErrorsAreRetried() {
        for code in [TenureError.Code.serverUnreachable, .catalogUnavailable, .timeout, .embeddedServer] {
            #expect(JobRetryPolicy.isRetryable(code), "\(code)")
        }
        for code in [TenureError.Code.cancelled, .postgres, .internal, .lifecycleConflict, .databaseNotFound, .backupNotFound, .invalidRequest, .legalHold] {
            #expect(!JobRetryPolicy.isRetryable(code), "\(code)")
        }
        // PostgreSQL's own errors: a server restarting or a lost race is transient, the rest is not.
        let states: [(String?, Bool)] = [
            ("57P01", true), ("57P02", true), ("57P03", true), ("08006", true), ("08001", true), ("40001", true), ("40P01", true),
            ("42P01", false), ("23505", false), ("53100", false), ("57014", false), (nil, false),
        ]
        for (state, retryable) in states {
            #expect(JobRetryPolicy.isRetryable(.postgres, sqlState: state) == retryable, "\(state ?? "nil")")
            #expect(!JobRetryPolicy.isRetryable(.internal, sqlState: state), "\(state ?? "nil")")
        }
    }

    @Test func statesSayWhetherTheyAreFinal() {
        #expect(JobState.allCases.filter(\.isFinished) == [.succeeded, .failed, .cancelled])
    }
}
