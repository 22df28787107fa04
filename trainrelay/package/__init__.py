"""``package``: the versioned deployment bundle (models, engine settings, server, Docker, guide).

``builder.build_package`` writes it, ``verify.verify_bundle`` checks it against its SHA256SUMS,
``server/serve.py`` is the inference server shipped inside it. See docs/deployment.md.
"""
