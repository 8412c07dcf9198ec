import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import '../../shared/style.css'; // the three front ends' one stylesheet: they look alike
import TokenStreamChat from './TokenStreamChat.jsx';

createRoot(document.getElementById('app')).render(<StrictMode><TokenStreamChat /></StrictMode>);
