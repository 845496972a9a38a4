-- wrk script: every call creates a copy request (policy decision, state and ledger in one transaction).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"ref": "bench-model", "to": "research", "kind": "research", "purpose": "load test", "ttl": "1d"}'
