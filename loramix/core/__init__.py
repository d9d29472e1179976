"""The floor everything stands on: the one typed config (`config`), errors, events, the confinement rule
(`paths`), the one writer every file goes through (`writer`), run folders (`runs`), the job store
(`job_store`), the environment check and CPU feature detection. Imports nothing else of loramix."""
