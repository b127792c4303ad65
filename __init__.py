"""Not a package of evalkit: this file runs only when the clone's folder itself is imported as `evalkit`.

That happens when the clone's folder is named `evalkit` and a script in the folder above it runs `import evalkit`
(Python puts a script's folder first on sys.path). Without this file Python imports the clone as an empty namespace
package, and with an editable install (./install.sh) it never reaches the real one: `module 'evalkit' has no
attribute 'generate'`. Here the installed evalkit is loaded in its place, with a note naming the folder in the way;
when evalkit is not installed at all, the ImportError says so.
"""

if __name__ == "evalkit":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _clone = os.path.dirname(os.path.abspath(__file__))
    _parent = os.path.dirname(_clone)

    def _installed_spec():  # type: ignore[no-untyped-def]
        elsewhere = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != os.path.realpath(_parent)]
        spec = importlib.machinery.PathFinder.find_spec("evalkit", elsewhere)
        if spec is not None and spec.origin not in (None, __file__) and spec.submodule_search_locations:
            return spec
        for finder in sys.meta_path:  # an editable install's finder comes after the path finder
            if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec("evalkit", None)
            if spec is not None and spec.origin not in (None, __file__):
                return spec
        return None

    _spec = _installed_spec()
    if _spec is None:
        raise ImportError(f"`import evalkit` found the folder {_clone} (a clone of evalkit, imported as a package "
                          f"because {_parent} is on sys.path) and no installed evalkit: run ./install.sh in {_clone}, "
                          "or run your script from another folder")
    print(f"evalkit: the folder {_clone} shadows the installed package (a script in {_parent} imports it as "
          f"`evalkit`); loaded the installed evalkit from {os.path.dirname(_spec.origin)}. Rename the folder or run "
          "the script from another one to silence this.", file=sys.stderr)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["evalkit"] = _module  # the import statement returns what sys.modules holds once this file has run
    _spec.loader.exec_module(_module)
