"""Background export jobs (the jobs issue builds this out; these are the signatures).

Planned interface, used by the API and the pages:

    decide: service.is_immediate(plan, settings)
    enqueue(engine, plan, who, settings, *, compression="none") -> JobInfo
    get_for(conn, job_id, who) -> JobInfo | None      # None when unknown or not visible
    list_for(conn, who, *, limit=100) -> list[JobInfo]
    cancel(engine, job_id, who, settings) -> JobInfo
    document(job, now=None) -> dict                    # the seed's AuditExportJob body
    file_path(settings, job) -> Path
"""
