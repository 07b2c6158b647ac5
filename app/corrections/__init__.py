"""Users' corrections of the model's answers (issue 19): stored, reviewed, and learnt from.

A user of the web app says "this photo is really species X" (or a new species, an unknown one, not a fish); a
reviewer accepts or rejects it; the accepted ones teach the model. The package, one module per concern:

* :mod:`app.corrections.models`: the SQLAlchemy tables (reviewers, photos, corrections, memories).
* :mod:`app.corrections.migrations`: their Alembic migrations, run in code by :func:`~app.corrections.migrations.
  upgrade` (no ``alembic.ini``), serialized between processes that start at once (gunicorn workers).
* :mod:`app.corrections.store`: :class:`~app.corrections.store.CorrectionStore`, the only way in: every read and
  write, each in one transaction, answering with frozen dataclasses (never ORM objects), over SQLite (default: a
  file in the instance folder) or PostgreSQL (``FISH_DATABASE_URL``, for several servers).
* :mod:`app.corrections.photos`: what a kept photo is: re-encoded to an upright JPEG without any metadata (no GPS),
  stored by its content hash.
* :mod:`app.corrections.admin`: the ``fish-admin`` command: add a reviewer, export the accepted corrections as an
  ImageFolder, back up and restore the database.
* ``routes`` (the web pages and API of the corrections) and ``learning`` (the memory of accepted corrections the
  workers serve) are built on the store by their owners.

These modules import neither Flask nor torch themselves (``routes`` and ``learning`` aside); importing them runs
``app/__init__.py``, which imports Flask but loads the model's modules (torch) only when an app is made.

A new migration: change :mod:`~app.corrections.models`, then write ``migrations/versions/NNNN_<what>.py`` by hand
or let Alembic draft it against a database at the current head::

    from alembic import command
    from sqlalchemy import create_engine
    from app.corrections.migrations import alembic_config

    with create_engine("sqlite:////tmp/head.sqlite3").begin() as connection:  # upgraded to head first
        command.revision(alembic_config(connection), message="what changes", autogenerate=True, rev_id="0002")
"""
