"""The Messages API client both API users share: the teacher-data pipeline (:mod:`distill.teacher_data`)
and the evaluation source :class:`distill.evaluation.sources.api.AnthropicApi`.

A low package (it imports only :mod:`distill.config`), so evaluation gets the same retries, rate
limits, key handling and usage accounting without importing the data pipeline:

* :mod:`.client`: :class:`~.client.TeacherClient`, the async client with our own retry policy;
* :mod:`.ratelimit`: client-side token buckets per model, kept across restarts;
* :mod:`.pricing`: dollars per call from a price table in config.
"""
