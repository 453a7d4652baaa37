"""The child side of :mod:`lrmjax.rewards.sandbox`: the harness source the sandbox runs.

The harness runs as ``python -I -S -c HARNESS``. It reads a marshal'd dict from stdin,
swaps stdin for /dev/null, and at isolation level "full" (it starts as root, inside fresh
mount, PID, network and IPC namespaces) builds the run's filesystem and drops to the run's
uid (see ``_setup_isolation`` below for the exact steps). Then it sets the resource limits,
runs the program, calls each requested function with its literal arguments, and writes
each result on the verdict fd in the wire format of :mod:`lrmjax.rewards.sandbox_verdict`.
It holds no expected value and no secret: the trusted parent compares, so nothing the
program does to the harness (rebinding builtins, walking frames, scanning ``gc``, tracing,
writing the fd itself) can do more than claim other results or garble the channel, and a
garbled channel fails the run.
"""

HARNESS = r"""
def _setup_isolation(iso):
    # As root in a new mount namespace whose propagation is private (unshare --mount), with
    # /proc already this PID namespace's own (unshare --mount-proc):
    # 1. every mount becomes read-only and nosuid, in this namespace only;
    # 2. one tmpfs of iso["tmpfs_mb"] MiB (and iso["inodes"] inodes) on the run directory,
    #    the run's only writable storage: its subdirectories are bound on /var/tmp, /dev/shm
    #    and /tmp (the working directory), so all writes share one quota and vanish with the
    #    namespace when the run ends;
    # 3. the uid drops to the run's (no groups, no capabilities, no_new_privs).
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_BIND = 32, 4096

    def mount(src, target, fstype, flags, data):
        enc = lambda s: None if s is None else s.encode()
        if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))

    def unescape(path):  # mountinfo escapes space, tab, newline, backslash as \ooo
        out, i = [], 0
        while i < len(path):
            if path[i] == "\\" and path[i + 1:i + 4].isdigit():
                out.append(chr(int(path[i + 1:i + 4], 8)))
                i += 4
            else:
                out.append(path[i])
                i += 1
        return "".join(out)

    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target, opts = unescape(fields[4]), fields[5].split(",")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        flags |= (MS_NODEV if "nodev" in opts else 0) | (MS_NOEXEC if "noexec" in opts else 0)
        mount(None, target, None, flags, None)
    uid, root = iso["uid"], iso["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%dm,nr_inodes=%d,mode=0755" % (iso["tmpfs_mb"], iso["inodes"]))
    for name, target in (("var_tmp", "/var/tmp"), ("shm", "/dev/shm"), ("tmp", "/tmp")):
        path = root + "/" + name
        os.mkdir(path, 0o700)
        os.chown(path, uid, uid)
        if os.path.isdir(target):
            mount(path, target, None, MS_BIND, None)  # /tmp last: root may lie under it
    os.chdir("/tmp")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay inert
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")


def _harness():
    import marshal, os, resource, sys
    chunks = []
    while True:
        b = os.read(0, 1 << 20)
        if not b:
            break
        chunks.append(b)
    cfg = marshal.loads(b"".join(chunks))
    del chunks
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if cfg["isolation"] is not None:
        _setup_isolation(cfg["isolation"])
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG=SIGKILL (cleared by setuid)
    except Exception:
        pass
    if cfg["stdin"] is not None:  # a standard-input test: its input on fd 0 (before limits)
        data, fd = cfg["stdin"].encode("utf-8", "surrogatepass"), os.memfd_create("stdin")
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, 0)
        os.dup2(fd, 0)
        os.close(fd)
    vfd, program, calls = cfg["vfd"], cfg["program"], cfg["calls"]
    for name, value in cfg["limits"]:
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if cfg["block_sockets"]:
        def _audit(event, args):
            if event.startswith("socket."):
                raise PermissionError("network disabled in sandbox: " + event)
        sys.addaudithook(_audit)
    import builtins
    # Bound before the program runs: it may rebind any name, builtin or module attribute.
    write, compile_, exec_, s_enc, b_hex = os.write, compile, exec, str.encode, bytes.hex
    type_, none_t, bool_, int_, float_, complex_ = type, type(None), bool, int, float, complex
    str_, bytes_, list_, tuple_, set_, fset_, dict_ = str, bytes, list, tuple, set, frozenset, dict
    base_exc, enumerate_, getattr_ = BaseException, enumerate, getattr
    join, append = "".join, list.append
    fmt, frepr, items, real, imag = format, float.__repr__, dict.items, complex.real, complex.imag
    get_real, get_imag = real.__get__, imag.__get__

    def encode(x, out, depth):
        # Only exact builtin types: no method of the program's runs while encoding.
        if depth > 100:
            raise ValueError("nested too deeply")
        t = type_(x)
        if t is none_t:
            append(out, '["n"]')
        elif t is bool_:
            append(out, '["b",1]' if x is True else '["b",0]')
        elif t is int_:
            append(out, '["i","' + fmt(x, "x") + '"]')  # hex: no int->str digit limit
        elif t is float_:
            append(out, '["f","' + frepr(x) + '"]')
        elif t is complex_:
            append(out, '["c","' + frepr(get_real(x)) + '","' + frepr(get_imag(x)) + '"]')
        elif t is str_:
            append(out, '["s","' + b_hex(s_enc(x, "utf-8", "surrogatepass")) + '"]')
        elif t is bytes_:
            append(out, '["y","' + b_hex(x) + '"]')
        elif t is dict_:
            append(out, '["d",[')
            first = True
            for k, v in items(x):
                append(out, "[" if first else ",[")
                encode(k, out, depth + 1)
                append(out, ",")
                encode(v, out, depth + 1)
                append(out, "]")
                first = False
            append(out, "]]")
        else:
            if t is list_:
                tag = '["l",['
            elif t is tuple_:
                tag = '["t",['
            elif t is set_:
                tag = '["set",['
            elif t is fset_:
                tag = '["fs",['
            else:
                raise TypeError("not an exact builtin type")
            append(out, tag)
            first = True
            for v in x:
                if not first:
                    append(out, ",")
                encode(v, out, depth + 1)
                first = False
            append(out, "]]")

    def emit(line):
        try:
            write(vfd, s_enc(line + "\n"))
        except base_exc:
            pass

    if cfg["stdin"] is not None:  # the parent judges stdout and the exit status
        del cfg
        exec_(compile_(program, "solution.py", "exec"),
              {"__name__": "__main__", "__builtins__": __builtins__})
        return
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec_(compile_(program, "solution.py", "exec"), ns)
    except base_exc as e:
        emit('["program","error"]')
        try:
            sys.stderr.write("program raised " + type(e).__name__ + "\n")
        except base_exc:
            pass
        return
    emit('["program","ok"]')
    for j, (name, args, kwargs) in enumerate_(calls):
        try:
            fn = ns[name] if name in ns else getattr_(builtins, name)
            out = []
            encode(fn(*args, **kwargs), out, 0)
            line = "[" + fmt(j, "d") + ',"ok",' + join(out) + "]"
        except base_exc:
            line = "[" + fmt(j, "d") + ',"error",null]'
        emit(line)

_harness()
"""
