"""The scheduler: decides when each job runs and starts backups on the job's host."""
