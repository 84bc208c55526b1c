"""Document (PDF) handling shared by the document backends: rendering, the record, parsers.

Pure library code: no database, no Airflow. The backends in ``labelloop.prelabel.documents`` wire
these pieces to the object store and the pre-label runner.
"""
