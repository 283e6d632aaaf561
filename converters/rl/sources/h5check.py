"""What an HDF5 file from a hub must be before any reader touches its data.

HDF5 can make a dataset read bytes from other files: external storage (raw data in another file),
external links (an object that is another file's), virtual datasets (a view of other files). A
hostile file uses them to pull any local file into the shards, so they are refused unless the
user opts in with --allow-hdf5-external-files. And a file can declare shapes far larger than the
bytes it holds (unallocated chunks read as the fill value): every dataset's declared size must be
backed by its stored bytes (within what compression can do) before anything sized by it is
allocated.
"""

from __future__ import annotations

from converters.base import SourceError
from tokenizer_kit.errors import first_line

MAX_RATIO = 1100  # deflate (and lzf) never expand more than about 1032:1
SMALL = 1 << 20  # datasets of at most this many declared bytes are not held to the ratio
MAX_OBJECTS = 10_000_000  # links walked at most (a file of millions of tiny objects is a maze, not data)
ALLOW_FLAG = "--allow-hdf5-external-files"


def check_hdf5(path: str, allow_external: bool = False) -> None:
    """Walk every link of the file at `path`; SourceError (one line, naming the object) for an
    external link, external storage or a virtual dataset (unless allowed), and for a dataset whose
    declared size its stored bytes cannot hold."""
    import h5py  # noqa: PLC0415 - only HDF5 data loads h5py: then workers spawn, not fork
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: not a readable HDF5 file ({first_line(e)})") \
            from None
    with f:
        try:
            _walk(path, f, allow_external)
        except SourceError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:  # damaged metadata
            raise SourceError(f"{path}: unreadable HDF5 data ({first_line(e)})") \
                from None


def _walk(path: str, f, allow_external: bool) -> None:
    import h5py  # noqa: PLC0415 - only HDF5 data loads h5py: then workers spawn, not fork
    todo, seen, groups = [("", f)], 0, {h5py.h5o.get_info(f.id).addr}
    while todo:
        prefix, group = todo.pop()
        for key in group:
            seen += 1
            if seen > MAX_OBJECTS:
                raise SourceError(f"{path}: more than {MAX_OBJECTS} HDF5 objects")
            name = f"{prefix}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                if not allow_external:
                    raise SourceError(f"{path}: {name} is an external link to {link.filename}:{link.path}; "
                                      f"refused (it reads another file; {ALLOW_FLAG} allows it)")
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a name for an object inside the file, checked where it lives
            try:
                obj = group[key]
            except (KeyError, OSError, ValueError) as e:
                raise SourceError(f"{path}: {name}: unreadable HDF5 object ({first_line(e)})") from None
            if isinstance(obj, h5py.Group):
                addr = h5py.h5o.get_info(obj.id).addr
                if addr not in groups:  # a group hard-linked twice (or into itself) is walked once
                    groups.add(addr)
                    todo.append((name, obj))
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(path, name, obj, allow_external)


def _check_dataset(path: str, name: str, ds, allow_external: bool) -> None:
    if not allow_external:
        if ds.external:
            raise SourceError(f"{path}: dataset {name} keeps its data in external file {ds.external[0][0]!r}; "
                              f"refused ({ALLOW_FLAG} allows it)")
        if ds.is_virtual:
            raise SourceError(f"{path}: dataset {name} is a virtual dataset over other files; "
                              f"refused ({ALLOW_FLAG} allows it)")
    if ds.external or ds.is_virtual:
        return  # its bytes live elsewhere: the user chose to trust them
    declared = int(ds.size or 0) * int(ds.dtype.itemsize)
    stored = int(ds.id.get_storage_size())
    if declared > SMALL and declared > stored * MAX_RATIO:
        raise SourceError(f"{path}: dataset {name} declares shape {tuple(ds.shape)} ({declared} bytes) but stores "
                          f"only {stored} bytes; refused before allocating it")
