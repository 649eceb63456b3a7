package dirlock

import "golang.org/x/sys/unix"

// Filesystem magic numbers (statfs f_type) of filesystems on which flock(2)
// is emulated, local to one client, or whose attribute caching defeats
// inode checks.
var remoteFS = map[int64]string{
	0x6969:     "nfs",
	0x517b:     "smb",
	-0xacb2be:  "cifs", // 0xff534d42 as int32
	-0x1acb2be: "smb2", // 0xfe534d42 as int32
	0x00c36400: "ceph",
	0x01021997: "9p",
	0x5346414f: "afs",
	0x0bd00bd0: "lustre",
	0x47504653: "gpfs",
}

// fsType returns the statfs type of path's filesystem, normalised to the
// sign of the kernel's 32-bit value.
func fsType(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(int32(uint32(st.Type))), nil
}
