"""The inspection service: HTTP (:mod:`~zsad.serve.app`) over products, inspections and reviews
(:mod:`~zsad.serve.service`), a store (:mod:`~zsad.serve.store`), one model thread
(:mod:`~zsad.serve.worker`) and what it inspects with (:mod:`~zsad.serve.models`: a method, or exported models
without PyTorch). Importing this package imports no PyTorch."""
