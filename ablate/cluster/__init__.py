"""Ray: running a plan's cells as Ray tasks, locally or on a cluster (runner), and Ray Job submission from a laptop
(jobs, with what ships in jobbundle and the dashboard client in jobclient)."""
