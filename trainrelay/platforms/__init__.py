"""``platforms``: adapters for where the workflow runs or where its files come from.

``colab`` (notebooks/colab.ipynb), ``runpod`` (S3 preflight and upload plan), ``packing`` (many
small raw files as one verified tar, for network volumes) and ``importer`` (outputs made
elsewhere, imported into results/<run>/ as done).

Nothing is imported here: ``colab`` must import on Colab's own Python (standard library and
PyYAML) before the checkout's environment exists.
"""
