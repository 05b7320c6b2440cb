"""The worker side: one cell on a Ray worker. cell.py (heartbeat, OOM retries, publishing) runs recipe.py (setup →
train → evaluate), which uses forward.py (log-probs of a batch), losses.py (one pure function per objective) and
checkpoint.py. faults.py holds the test-only fault injection. Only this package imports torch."""
