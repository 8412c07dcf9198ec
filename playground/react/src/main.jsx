import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import '../../style.css'; // the plain page's stylesheet: the three front ends look alike
import TokenStreamChat from './TokenStreamChat.jsx';

createRoot(document.getElementById('app')).render(<StrictMode><TokenStreamChat /></StrictMode>);
