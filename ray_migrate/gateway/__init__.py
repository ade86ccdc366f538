"""A Qdrant-API gateway: applications keep their Qdrant client (REST) and point it at a Ray
Serve app whose replicas answer every request through ``RoutedCollection`` (``ops``), so they
take part in a live migration without changing a line. ``settings``: the config's
``gateway:`` section; ``app``: the Serve deployment; ``filters``: Qdrant's filters."""
