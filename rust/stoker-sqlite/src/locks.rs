//! File locks that hold against every other SQLite in the process.
//!
//! SQLite's unix VFS locks the database and its `-shm` file with POSIX
//! record locks (`fcntl(F_SETLK)`). Those belong to a *process*: a process
//! never conflicts with its own locks, and closing any descriptor of a file
//! drops every lock the process holds on it. SQLite copes within one copy of
//! the library by sharing its lock state per file (its `unixInodeInfo`), but
//! stoker bundles its own SQLite, and a Python program that also opens the
//! database with the standard `sqlite3` module has a second copy that shares
//! nothing with ours (the hazard "multiple copies of SQLite linked into the
//! same application" of SQLite's "How To Corrupt" page). Seen from either
//! copy, the other's locks do not exist:
//!
//! - both take the WAL write lock at once, and the commit that comes second
//!   writes over the first: a send that returned its id is gone;
//! - the second copy to open the `-shm` file believes it is the only
//!   connection and rebuilds it under the first, which from then on misses
//!   the commits of other processes.
//!
//! Open file description locks (`F_OFD_SETLK`, Linux 3.15) belong to an open
//! file description instead, and the kernel makes them conflict with POSIX
//! locks even within one process. Every lock our SQLite takes is therefore
//! taken as an OFD lock, through SQLite's documented system-call override
//! (`xSetSystemCall`), on a description of our own per file: one per file
//! and process, which is exactly the per-process lock SQLite's shared lock
//! state is built on, but one that another copy of SQLite in the process
//! sees and that its `close()` cannot drop.
//!
//! The description is opened afresh (through `/proc/self/fd`, not `dup`, so
//! it is not shared with SQLite's own descriptor), kept while SQLite has any
//! descriptor of the file open, and closed with the last one. A child made
//! by `fork()` closes its copies of these descriptions at once: otherwise a
//! lock its parent held would outlive the parent for as long as the child
//! lives. Where the kernel has no OFD locks, locking stays as SQLite does it.

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use std::cell::UnsafeCell;
    use std::collections::BTreeMap;
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::sync::{Once, OnceLock};

    use rusqlite::ffi;

    type FcntlFn = unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int;
    type OpenFn = unsafe extern "C" fn(*const c_char, c_int, c_int) -> c_int;
    type CloseFn = unsafe extern "C" fn(c_int) -> c_int;

    /// A file, as the kernel names it: device and inode.
    type FileKey = (u64, u64);

    /// SQLite's descriptors of one file, and the description our locks on
    /// it are taken through.
    struct LockedFile {
        descriptors: Vec<c_int>,
        lock_fd: Option<c_int>,
    }

    /// The files SQLite has open, behind a pthread mutex rather than a
    /// `std::sync::Mutex`: the fork handlers must hold it across `fork()`
    /// and release it in both processes, which a guard cannot express.
    struct Files {
        mutex: UnsafeCell<libc::pthread_mutex_t>,
        table: UnsafeCell<Table>,
    }

    struct Table {
        /// The files, by their kernel name.
        files: BTreeMap<FileKey, LockedFile>,
        /// SQLite's descriptors, by number: a lock call finds its file here
        /// without a system call.
        keys: BTreeMap<c_int, FileKey>,
    }

    // SAFETY: `table` is only touched with `mutex` held.
    unsafe impl Sync for Files {}

    static FILES: Files = Files {
        mutex: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
        table: UnsafeCell::new(Table {
            files: BTreeMap::new(),
            keys: BTreeMap::new(),
        }),
    };

    /// Runs `f` on the table with its mutex held.
    fn with_files<T>(f: impl FnOnce(&mut Table) -> T) -> T {
        // SAFETY: the mutex serialises every access to the table.
        unsafe {
            libc::pthread_mutex_lock(FILES.mutex.get());
            let value = f(&mut *FILES.table.get());
            libc::pthread_mutex_unlock(FILES.mutex.get());
            value
        }
    }

    struct Originals {
        open: OpenFn,
        close: CloseFn,
    }
    static ORIGINALS: OnceLock<Originals> = OnceLock::new();
    static INSTALL: Once = Once::new();

    fn originals() -> &'static Originals {
        ORIGINALS.get().expect("set before the hooks are installed")
    }

    fn file_key(fd: c_int) -> Option<FileKey> {
        // SAFETY: fstat writes into the zeroed struct it is given.
        unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            (libc::fstat(fd, &mut stat) == 0).then_some((stat.st_dev, stat.st_ino))
        }
    }

    unsafe extern "C" fn hooked_open(path: *const c_char, flags: c_int, mode: c_int) -> c_int {
        let fd = (originals().open)(path, flags, mode);
        if fd >= 0 {
            if let Some(key) = file_key(fd) {
                with_files(|table| {
                    table
                        .files
                        .entry(key)
                        .or_insert(LockedFile {
                            descriptors: Vec::new(),
                            lock_fd: None,
                        })
                        .descriptors
                        .push(fd);
                    table.keys.insert(fd, key);
                });
            }
        }
        fd
    }

    unsafe extern "C" fn hooked_close(fd: c_int) -> c_int {
        let last_lock_fd = with_files(|table| {
            let key = table.keys.remove(&fd)?;
            let file = table.files.get_mut(&key)?;
            file.descriptors.retain(|&open| open != fd);
            if !file.descriptors.is_empty() {
                return None;
            }
            table.files.remove(&key).and_then(|file| file.lock_fd)
        });
        if let Some(lock_fd) = last_lock_fd {
            libc::close(lock_fd);
        }
        (originals().close)(fd)
    }

    /// The description this process's locks on `fd`'s file go through,
    /// opened on first use.
    fn lock_fd_for(fd: c_int) -> Option<c_int> {
        with_files(|table| {
            // Only descriptors SQLite opened through the hook: one opened
            // before it keeps the POSIX locks it may already hold.
            let key = table.keys.get(&fd)?;
            let file = table.files.get_mut(key)?;
            if file.lock_fd.is_none() {
                // Opening /proc/self/fd/N makes a new open file description
                // of the same file: dup would share SQLite's, and with it its
                // locks in a forked child. The access mode follows SQLite's
                // descriptor, since a write lock needs one open for writing.
                let path = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
                // SAFETY: plain system calls on a valid descriptor and path.
                let lock_fd = unsafe {
                    let access = libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE;
                    libc::open(path.as_ptr(), access | libc::O_CLOEXEC)
                };
                if lock_fd < 0 {
                    return None;
                }
                file.lock_fd = Some(lock_fd);
            }
            file.lock_fd
        })
    }

    unsafe extern "C" fn hooked_fcntl(fd: c_int, cmd: c_int, arg: *mut c_void) -> c_int {
        let ofd_cmd = match cmd {
            libc::F_SETLK => libc::F_OFD_SETLK,
            libc::F_SETLKW => libc::F_OFD_SETLKW,
            libc::F_GETLK => libc::F_OFD_GETLK,
            _ => return libc::fcntl(fd, cmd, arg),
        };
        let lock = arg.cast::<libc::flock>();
        match lock_fd_for(fd) {
            Some(lock_fd) if !lock.is_null() => {
                // OFD locks take no pid: the kernel refuses anything but 0.
                (*lock).l_pid = 0;
                libc::fcntl(lock_fd, ofd_cmd, lock)
            }
            // A descriptor SQLite did not open through the hook (none
            // should exist): its lock stays a POSIX one.
            _ => libc::fcntl(fd, cmd, arg),
        }
    }

    /// Whether the kernel knows OFD locks.
    fn ofd_supported() -> bool {
        // SAFETY: a query of no lock on a descriptor of our own.
        unsafe {
            let fd = libc::open(c"/proc/self/exe".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return false;
            }
            let mut lock: libc::flock = std::mem::zeroed();
            lock.l_type = libc::F_RDLCK as _;
            lock.l_whence = libc::SEEK_SET as _;
            let rc = libc::fcntl(fd, libc::F_OFD_GETLK, &mut lock);
            libc::close(fd);
            rc == 0
        }
    }

    // fork(): the table's mutex is held across it, so no other thread holds
    // it in the child, and the child closes its copies of the lock
    // descriptions (they are its parent's locks, and would keep them held
    // after the parent is gone). SQLite's own descriptors stay counted: the
    // child has them too.
    extern "C" fn before_fork() {
        // SAFETY: released by one of the two handlers below.
        unsafe { libc::pthread_mutex_lock(FILES.mutex.get()) };
    }
    extern "C" fn after_fork_in_parent() {
        // SAFETY: locked by this thread in before_fork.
        unsafe { libc::pthread_mutex_unlock(FILES.mutex.get()) };
    }
    extern "C" fn after_fork_in_child() {
        // SAFETY: the child's one thread is the one that locked the mutex.
        unsafe {
            for file in (*FILES.table.get()).files.values_mut() {
                if let Some(lock_fd) = file.lock_fd.take() {
                    libc::close(lock_fd);
                }
            }
            libc::pthread_mutex_unlock(FILES.mutex.get());
        }
    }

    /// Replaces the system call `name` of `vfs` with `hook`.
    unsafe fn replace(vfs: *mut ffi::sqlite3_vfs, name: &CStr, hook: unsafe extern "C" fn()) {
        let set = (*vfs)
            .xSetSystemCall
            .expect("the unix VFS has xSetSystemCall");
        let rc = set(vfs, name.as_ptr(), Some(hook));
        assert_eq!(rc, ffi::SQLITE_OK, "xSetSystemCall({name:?})");
    }

    pub fn install() {
        INSTALL.call_once(|| {
            if !ofd_supported() {
                return;
            }
            // SAFETY: each hook has the shape of the call it replaces (the
            // unix VFS calls fcntl with a pointer or an int third argument,
            // which is read as a pointer-sized word, as glibc's own wrapper
            // reads it), and they are installed before this process opens
            // any connection.
            unsafe {
                let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
                assert!(!vfs.is_null(), "SQLite has a default VFS");
                let get = (*vfs)
                    .xGetSystemCall
                    .expect("the unix VFS has xGetSystemCall");
                let original =
                    |name: &CStr| get(vfs, name.as_ptr()).expect("the unix VFS makes this call");
                // The originals are known before any hook can run.
                let _ = ORIGINALS.set(Originals {
                    open: std::mem::transmute::<unsafe extern "C" fn(), OpenFn>(original(c"open")),
                    close: std::mem::transmute::<unsafe extern "C" fn(), CloseFn>(original(
                        c"close",
                    )),
                });
                replace(
                    vfs,
                    c"open",
                    std::mem::transmute::<OpenFn, unsafe extern "C" fn()>(hooked_open as OpenFn),
                );
                replace(
                    vfs,
                    c"close",
                    std::mem::transmute::<CloseFn, unsafe extern "C" fn()>(hooked_close as CloseFn),
                );
                replace(
                    vfs,
                    c"fcntl",
                    std::mem::transmute::<FcntlFn, unsafe extern "C" fn()>(hooked_fcntl as FcntlFn),
                );
                libc::pthread_atfork(
                    Some(before_fork),
                    Some(after_fork_in_parent),
                    Some(after_fork_in_child),
                );
            }
        });
    }
}

/// Makes every lock this process's SQLite takes an open file description
/// lock (see the module docs). Called before the first connection opens.
pub fn install() {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    imp::install();
}
